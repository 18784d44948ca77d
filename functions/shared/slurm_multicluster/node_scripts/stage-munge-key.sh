#!/usr/bin/env bash
# stage-munge-key.sh: put a new munge key on this node, ready for a switch, without using it yet.
#
# Usage (head node):     stage-munge-key.sh --secret-id ID --region REGION --expect-sha256 HEX --backup-id ID
#                            [--version-stage AWSPENDING|AWSCURRENT|AWSPREVIOUS] [--shared-dirs]
# Usage (compute/login): stage-munge-key.sh --from-shared-dir --expect-sha256 HEX --backup-id ID
#   --secret-id ID         the federation secret (name or ARN): SecretString = base64 of the key
#   --region REGION        the secret's region
#   --version-stage STAGE  which version to stage (default AWSPENDING: the key a rotation created)
#   --from-shared-dir      take the key the head node staged in its NFS-shared munge dir (the first
#                          <dir>/.munge.key.pending of SHARED_MUNGE_DIRS)
#   --expect-sha256 HEX    the key's sha256 fingerprint; any other key is refused and nothing changes
#   --backup-id ID         the rotation's execution name: names the staging slot and the backup
#   --shared-dirs          also write <dir>/.munge.key.pending into each existing dir of SHARED_MUNGE_DIRS,
#                          for this head node's compute and login nodes to stage from (head node only)
#
# Step "setSecret, part 1" of the rotation: the key is written to $STAGING_ROOT/ID/munge.key (root 0600)
# and, with --shared-dirs, next to the shared key as .munge.key.pending (root 0600). The key munge uses
# (MUNGE_KEY_FILE) and the shared .munge.key that compute nodes boot with are NOT touched and nothing is
# restarted: `install-munge-key.sh --from-staged --backup-id ID` switches to it later, in seconds, with no
# network access. Each staged file is recorded in the backup manifest first (as absent when new), so
# `restore-backup.sh --backup-id ID` removes what a failed rotation staged.
# Idempotent: files already holding the key are left alone ("changed": false when all do).
# Key bytes only ever live in those files and a 0700 temp dir; output carries fingerprints only.
# Last stdout line, one JSON object: ok, changed, sha256, stagedFiles (every staged copy), source
# ("secret" or "shared-dir") [, error].
# Exit status: 0 done, 1 failed (what this run staged is removed again), 2 invalid input (nothing changed).
# Environment: STAGING_ROOT, SHARED_MUNGE_DIRS, BACKUP_ROOT (see common.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

secret_id=""
region=""
version_stage=AWSPENDING
from_shared_dir=false
expect_sha=""
backup_id=""
shared_dirs=false
while (($#)); do
    case $1 in
        --secret-id) require_value "$@"; secret_id=$2; shift 2 ;;
        --region) require_value "$@"; region=$2; shift 2 ;;
        --version-stage) require_value "$@"; version_stage=$2; shift 2 ;;
        --from-shared-dir) from_shared_dir=true; shift ;;
        --expect-sha256) require_value "$@"; expect_sha=$2; shift 2 ;;
        --backup-id) require_value "$@"; backup_id=$2; shift 2 ;;
        --shared-dirs) shared_dirs=true; shift ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
if [[ $from_shared_dir == true ]]; then
    [[ -z $secret_id && -z $region ]] || die_usage "--from-shared-dir excludes --secret-id and --region"
    [[ $shared_dirs == false ]] || die_usage "--from-shared-dir excludes --shared-dirs"
else
    [[ -n $secret_id ]] || die_usage "--secret-id is required (or --from-shared-dir)"
    [[ -n $region ]] || die_usage "--region is required"
    check_secret_id "$secret_id"
    check_region "$region"
fi
case $version_stage in
    AWSCURRENT | AWSPENDING | AWSPREVIOUS) ;;
    *) die_usage "invalid --version-stage: must be AWSPENDING, AWSCURRENT or AWSPREVIOUS" ;;
esac
[[ -n $expect_sha ]] || die_usage "--expect-sha256 is required"
[[ -n $backup_id ]] || die_usage "--backup-id is required"
check_sha256 --expect-sha256 "$expect_sha"
check_backup_id "$backup_id"
check_path_settings

# --- fetch the key into a private temp dir and check it before anything changes
make_private_tmpdir
key="$PRIVATE_TMPDIR/munge.key"
if [[ $from_shared_dir == true ]]; then
    source_kind=shared-dir
    source_file=""
    for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
        if [[ -f $dir/$SHARED_PENDING_KEY_NAME ]]; then
            source_file="$dir/$SHARED_PENDING_KEY_NAME"
            break
        fi
    done
    [[ -n $source_file ]] || die "nothing staged by the head node: none of $SHARED_MUNGE_DIRS holds $SHARED_PENDING_KEY_NAME"
    cat -- "$source_file" >"$key"
else
    source_kind=secret
    rc=0
    read_secret_key "$secret_id" "$region" --version-stage "$version_stage" "$key" || rc=$?
    ((rc != 3)) || die "the secret has no $version_stage version (or does not exist)"
    ((rc == 0)) || die "cannot read $version_stage of the secret"
fi
key_size_ok "$key" || die "the key is $(wc -c <"$key") bytes: a munge key must be 32..1024 bytes"
key_sha=$(sha256_of "$key")
[[ $key_sha == "$expect_sha" ]] ||
    die "fingerprint mismatch: the key's sha256 is $key_sha, expected $expect_sha; nothing was changed"

# --- what is not staged yet
staged_file="$STAGING_ROOT/$backup_id/munge.key"
targets=("$staged_file")
if [[ $shared_dirs == true ]]; then
    for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
        [[ -d $dir ]] && targets+=("$dir/$SHARED_PENDING_KEY_NAME")
    done
fi
missing=()
for target in "${targets[@]}"; do
    [[ $(sha256_of "$target") == "$expect_sha" ]] || missing+=("$target")
done
result_str sha256 "$expect_sha"
result_list stagedFiles "${targets[@]}"
result_str source "$source_kind"
if ((${#missing[@]} == 0)); then
    finish
fi

written=()
# unstage: put back what this run wrote (ON_FAILURE hook); the key munge uses was never touched.
# shellcheck disable=SC2317 # called through ON_FAILURE
unstage() {
    ((${#written[@]} == 0)) || restore_paths "${written[@]}"
}

lock_node
backup_open "$backup_id"
ON_FAILURE=unstage
CHANGED=true
mkdir -p -- "$STAGING_ROOT/$backup_id"
chmod 0700 -- "$STAGING_ROOT" "$STAGING_ROOT/$backup_id"
for target in "${missing[@]}"; do
    backup_file "$target"
    written+=("$target")
    write_file_atomically "$key" "$target" 0600 root:root
    echo "staged the key in $target" >&2
done
finish
