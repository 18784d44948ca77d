#!/usr/bin/env bash
# create-pending-munge-key.sh: generate a new munge key on this node and store it as the secret's AWSPENDING.
#
# Usage: create-pending-munge-key.sh --secret-id ID --region REGION --version-id TOKEN [--key-bytes N]
#   --secret-id ID      the federation secret (name or ARN), whose AWSCURRENT this node runs
#   --region REGION     the secret's region
#   --version-id TOKEN  the new version's id (ClientRequestToken, 32..64 of A-Za-z0-9-): the rotation
#                       workflow derives it from its execution, so a repeated run finds its own key again
#   --key-bytes N       size of the new key, 32..1024 bytes (default 1024, as ParallelCluster's own keys)
#
# Step "createSecret" of Secrets Manager's rotation protocol, run on the accounting head node so the key is
# born where it is used and never passes through Lambda, Step Functions or SSM:
#   1. refuses unless the secret's AWSCURRENT decodes to the key this node runs (MUNGE_KEY_FILE): a
#      rotation starts from the key the federation really uses;
#   2. when version TOKEN already exists and is AWSPENDING: "changed": false, its fingerprint is reported;
#   3. else reads N bytes from /dev/urandom and puts their base64 as version TOKEN with the single staging
#      label AWSPENDING (`put-secret-value --client-request-token TOKEN --version-stages AWSPENDING`; the
#      label moves off any older pending version). AWSCURRENT is not touched.
# Nothing on this node changes. The key lives only in a 0700 temp dir (memory-backed /dev/shm when possible),
# goes to the aws CLI as `file://`, and is never printed: output carries fingerprints only.
# Last stdout line, one JSON object: ok, changed, sha256 (the pending key's fingerprint), versionId,
# keyBytes, currentSha256, currentVersionId [, error].
# Exit status: 0 done, 1 failed or refused, 2 invalid input (nothing changed).
# Environment: MUNGE_KEY_FILE (/etc/munge/munge.key); the aws CLI's usual credentials and settings.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

RE_VERSION_ID='^[A-Za-z0-9-]{32,64}$'

secret_id=""
region=""
version_id=""
key_bytes=1024
while (($#)); do
    case $1 in
        --secret-id) require_value "$@"; secret_id=$2; shift 2 ;;
        --region) require_value "$@"; region=$2; shift 2 ;;
        --version-id) require_value "$@"; version_id=$2; shift 2 ;;
        --key-bytes) require_value "$@"; key_bytes=$2; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $secret_id ]] || die_usage "--secret-id is required"
[[ -n $region ]] || die_usage "--region is required"
[[ -n $version_id ]] || die_usage "--version-id is required"
check_secret_id "$secret_id"
check_region "$region"
check_regex --version-id "$version_id" "$RE_VERSION_ID" "32..64 characters from A-Za-z0-9-"
check_regex --key-bytes "$key_bytes" '^[1-9][0-9]{1,3}$' "a number of bytes from 32 to 1024"
((key_bytes >= 32 && key_bytes <= 1024)) || die_usage "invalid --key-bytes: must be from 32 to 1024"
check_path_settings

[[ -f $MUNGE_KEY_FILE && -r $MUNGE_KEY_FILE ]] || die "cannot read the munge key at $MUNGE_KEY_FILE"
local_sha=$(sha256_of "$MUNGE_KEY_FILE")
make_private_tmpdir
aws_err="$PRIVATE_TMPDIR/aws.err"

# stages_of VERSION_ID: the staging labels of that version, space-separated.
stages_of() {
    local out
    out=$(aws secretsmanager describe-secret --secret-id "$secret_id" --region "$region" \
        --query "VersionIdsToStages.\"$1\"" --output text 2>"$aws_err") || {
        echo "error: cannot describe the secret: $(grep -v '^$' "$aws_err" | tail -n1)" >&2
        return 1
    }
    printf '%s' "${out//$'\t'/ }"
}

# --- 1. the rotation starts from the key this node runs
current="$PRIVATE_TMPDIR/current.key"
rc=0
read_secret_key "$secret_id" "$region" --version-stage AWSCURRENT "$current" || rc=$?
((rc != 3)) || die "the secret has no AWSCURRENT value (or does not exist): pair the federation before rotating its key"
((rc == 0)) || die "cannot read AWSCURRENT of the secret"
current_sha=$(sha256_of "$current")
rm -f -- "$current"
[[ $current_sha == "$local_sha" ]] ||
    die "the secret's AWSCURRENT (sha256 $current_sha) is not the key this node runs (sha256 $local_sha): refusing to rotate from it"
current_version=$SECRET_VERSION_ID
result_str currentSha256 "$current_sha"
result_str currentVersionId "$current_version"

# --- 2. this rotation's key already exists (a repeated run)
pending="$PRIVATE_TMPDIR/pending.key"
rc=0
read_secret_key "$secret_id" "$region" --version-id "$version_id" "$pending" || rc=$?
if ((rc == 0)); then
    stages=$(stages_of "$version_id") || die "cannot read the labels of version $version_id"
    [[ " $stages " == *" AWSPENDING "* ]] ||
        die "version $version_id already exists with labels '$stages', not AWSPENDING: it cannot be this rotation's pending key"
    key_size_ok "$pending" || die "version $version_id is not a 32..1024 byte munge key"
    result_str sha256 "$(sha256_of "$pending")"
    result_str versionId "$version_id"
    result_raw keyBytes "$(wc -c <"$pending")"
    finish
fi
((rc == 3)) || die "cannot read version $version_id of the secret"

# --- 3. a new key, born here
head -c "$key_bytes" /dev/urandom >"$pending"
key_size_ok "$pending" || die "could not read $key_bytes random bytes"
pending_sha=$(sha256_of "$pending")
[[ $pending_sha != "$current_sha" ]] || die "the new key equals the current one (no randomness?)"
upload="$PRIVATE_TMPDIR/pending.b64"
base64 -w0 <"$pending" >"$upload"
chmod 0600 "$upload"
CHANGED=true
if ! aws secretsmanager put-secret-value --secret-id "$secret_id" --region "$region" \
    --client-request-token "$version_id" --secret-string "file://$upload" --version-stages AWSPENDING \
    --query VersionId --output text >/dev/null 2>"$aws_err"; then
    CHANGED=false
    die "cannot store the new key as AWSPENDING: $(grep -v '^$' "$aws_err" | tail -n1)"
fi
# read back: AWSPENDING is on our version and holds our key (no other writer raced us)
check="$PRIVATE_TMPDIR/check.key"
read_secret_key "$secret_id" "$region" --version-stage AWSPENDING "$check" || die "cannot read back AWSPENDING"
[[ $SECRET_VERSION_ID == "$version_id" ]] ||
    die "after the upload AWSPENDING is not on version $version_id (another writer?)"
[[ $(sha256_of "$check") == "$pending_sha" ]] || die "version $version_id does not hold the key just generated"
result_str sha256 "$pending_sha"
result_str versionId "$version_id"
result_raw keyBytes "$key_bytes"
finish
