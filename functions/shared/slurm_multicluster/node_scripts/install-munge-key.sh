#!/usr/bin/env bash
# install-munge-key.sh: install the federation munge key on this node and restart what uses it.
#
# Usage (head node):     install-munge-key.sh --secret-id ID --region REGION --expect-sha256 HEX --backup-id ID
#                            [--version-stage AWSCURRENT|AWSPENDING|AWSPREVIOUS] [--shared-dirs]
#                            [--restart UNIT[,UNIT...]] [--deadline SECONDS] [--keep-backups N]
# Usage (compute/login): install-munge-key.sh --from-shared-dir --expect-sha256 HEX --backup-id ID
#                            [--restart UNIT[,UNIT...]] [--deadline SECONDS] [--keep-backups N]
# Usage (rotation):      install-munge-key.sh --from-staged --expect-sha256 HEX --backup-id ID [--shared-dirs]
#                            [--restart UNIT[,UNIT...]] [--hold slurmctld | --start-held] [--deadline SECONDS]
#                            [--keep-backups N]
#   --secret-id ID         the federation secret (name or ARN): SecretString = base64 of the key
#   --region REGION        the secret's region
#   --version-stage STAGE  which version to install (default AWSCURRENT)
#   --from-shared-dir      take the key from the head node's NFS-shared copy (the first existing
#                          <dir>/.munge.key of SHARED_MUNGE_DIRS), as ParallelCluster compute nodes do
#   --from-staged          take the key stage-munge-key.sh staged on this node under the same --backup-id
#                          ($STAGING_ROOT/ID/munge.key): a switch that needs no network; afterwards the
#                          staged copies (and with --shared-dirs the shared .munge.key.pending) are removed
#   --expect-sha256 HEX    the key's sha256 fingerprint; any other key is refused and nothing changes
#   --backup-id ID         backup name (the workflow's execution name), see restore-backup.sh
#   --shared-dirs          also write <dir>/.munge.key into each existing dir of SHARED_MUNGE_DIRS, where
#                          compute and login nodes copy their key from (head node only)
#   --restart UNITS        Slurm daemons to restart after munge: slurmdbd, slurmctld, slurmd; restarted in
#                          that order, and only those that exist and are not deliberately stopped (inactive)
#   --hold slurmctld       (head node) when this node's key changes, stop slurmctld before munge restarts and
#                          leave it stopped (recorded as held:slurmctld in the backup manifest: restore-backup.sh
#                          starts it again). While it is down, a job that ends on a compute node still on the
#                          old key cannot report it: its slurmstepd retries until slurmctld answers, where a
#                          slurmctld on the new key would refuse the report for good and leave the job RUNNING
#   --start-held           once this node runs the expected key: start what a --hold under the same --backup-id
#                          stopped and is still stopped (slurmctld: until `scontrol ping` says UP); run it after
#                          every compute and login node switched
#   --deadline SECONDS     how long each daemon gets to become ready after its restart (default 120)
#   --keep-backups N       after a successful change keep the newest N backup sets of this node (1..99,
#                          default 3), this one included; older ones are deleted unless changed in the last
#                          12 h (a run that may still roll back), so old keys do not stay on disk forever
#
# The key must be 32..1024 bytes with the expected fingerprint. When MUNGE_KEY_FILE (and with --shared-dirs
# the shared copies) already hold it: "changed": false, nothing restarted. Otherwise: back up, write
# atomically (munge:munge 0400; shared copies keep their owner and mode, root 0600 when new), restart munge,
# wait until it is active and a local `munge -n | unmunge` works, then restart the listed daemons
# (slurmctld: until `scontrol ping` says UP). On a failure after a change: restore the backup, restart
# again, fail. Key bytes only ever live in a 0700 temp dir; output carries fingerprints only.
# Last stdout line, one JSON object: ok, changed, sha256, previousSha256, restarted (units, munge first; with
# --start-held the units started), with --hold held (units it stopped and left stopped), sharedFiles
# (list of shared copies written), source ("secret", "shared-dir" or "staged"), with --from-staged unstaged
# (the staged copies removed), prunedBackups (backup ids deleted after the change) [, rolledBack, error].
# Exit status: 0 done, 1 failed (rolled back), 2 invalid input (nothing changed).
# Environment: MUNGE_KEY_FILE, SHARED_MUNGE_DIRS, BACKUP_ROOT, MUNGE_SOCKET (see common.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

secret_id=""
region=""
version_stage=AWSCURRENT
from_shared_dir=false
from_staged=false
expect_sha=""
backup_id=""
shared_dirs=false
restart_list=""
restart_given=false
hold_list=""
start_held=false
deadline_seconds=120
keep_backups=$KEEP_BACKUPS_DEFAULT
while (($#)); do
    case $1 in
        --secret-id) require_value "$@"; secret_id=$2; shift 2 ;;
        --region) require_value "$@"; region=$2; shift 2 ;;
        --version-stage) require_value "$@"; version_stage=$2; shift 2 ;;
        --from-shared-dir) from_shared_dir=true; shift ;;
        --from-staged) from_staged=true; shift ;;
        --expect-sha256) require_value "$@"; expect_sha=$2; shift 2 ;;
        --backup-id) require_value "$@"; backup_id=$2; shift 2 ;;
        --shared-dirs) shared_dirs=true; shift ;;
        --restart) require_value "$@"; restart_list=$2; restart_given=true; shift 2 ;;
        --hold) require_value "$@"; hold_list=$2; shift 2 ;;
        --start-held) start_held=true; shift ;;
        --deadline) require_value "$@"; deadline_seconds=$2; shift 2 ;;
        --keep-backups) require_value "$@"; keep_backups=$2; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
if [[ $from_staged == true ]]; then
    [[ -z $secret_id && -z $region ]] || die_usage "--from-staged excludes --secret-id and --region"
    [[ $from_shared_dir == false ]] || die_usage "--from-staged excludes --from-shared-dir"
elif [[ $from_shared_dir == true ]]; then
    [[ -z $secret_id && -z $region ]] || die_usage "--from-shared-dir excludes --secret-id and --region"
    [[ $shared_dirs == false ]] || die_usage "--from-shared-dir excludes --shared-dirs"
else
    [[ -n $secret_id ]] || die_usage "--secret-id is required (or --from-shared-dir or --from-staged)"
    [[ -n $region ]] || die_usage "--region is required"
    check_secret_id "$secret_id"
    check_region "$region"
fi
case $version_stage in
    AWSCURRENT | AWSPENDING | AWSPREVIOUS) ;;
    *) die_usage "invalid --version-stage: must be AWSCURRENT, AWSPENDING or AWSPREVIOUS" ;;
esac
[[ -n $expect_sha ]] || die_usage "--expect-sha256 is required"
[[ -n $backup_id ]] || die_usage "--backup-id is required"
check_sha256 --expect-sha256 "$expect_sha"
check_backup_id "$backup_id"
check_seconds --deadline "$deadline_seconds" 3600
check_keep_backups "$keep_backups"
units_to_restart=()
if [[ $restart_given == true ]]; then
    [[ $restart_list =~ ^[a-z]+(,[a-z]+)*$ ]] || die_usage "invalid --restart: a comma-separated list of slurmdbd, slurmctld, slurmd"
    IFS=, read -r -a requested <<<"$restart_list"
    for unit in "${requested[@]}"; do
        case $unit in
            slurmdbd | slurmctld | slurmd) ;;
            *) die_usage "invalid --restart: $unit is not one of slurmdbd, slurmctld, slurmd" ;;
        esac
    done
    for unit in slurmdbd slurmctld slurmd; do
        case ",$restart_list," in *",$unit,"*) units_to_restart+=("$unit") ;; esac
    done
fi
units_to_hold=()
if [[ -n $hold_list ]]; then
    [[ $hold_list == slurmctld ]] || die_usage "invalid --hold: only slurmctld can be held"
    [[ $start_held == false ]] || die_usage "--hold excludes --start-held"
    case ",$restart_list," in *",slurmctld,"*) die_usage "--hold slurmctld excludes --restart slurmctld" ;; esac
    units_to_hold=(slurmctld)
fi
check_path_settings

# --- fetch the key into a private temp dir and check it before anything changes
make_private_tmpdir
key="$PRIVATE_TMPDIR/munge.key"
staged_file="$STAGING_ROOT/$backup_id/munge.key"
# staged_copies: the staged files a --from-staged switch removes once the key is in use.
staged_copies() {
    [[ $from_staged == true ]] || return 0
    [[ ! -e $staged_file ]] || printf '%s\n' "$staged_file"
    if [[ $shared_dirs == true ]]; then
        for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
            [[ ! -e $dir/$SHARED_PENDING_KEY_NAME ]] || printf '%s\n' "$dir/$SHARED_PENDING_KEY_NAME"
        done
    fi
}
unstaged=()
# unstage: remove the staged copies (the key they hold is the one now in use).
unstage() {
    local path
    while IFS= read -r path; do
        [[ -n $path ]] || continue
        rm -f -- "$path"
        unstaged+=("$path")
        CHANGED=true
    done < <(staged_copies)
    [[ $from_staged != true ]] || rmdir -- "$STAGING_ROOT/$backup_id" 2>/dev/null || true
}
if [[ $from_staged == true ]]; then
    source_kind=staged
    if [[ -f $staged_file ]]; then
        cat -- "$staged_file" >"$key"
    elif [[ $(sha256_of "$MUNGE_KEY_FILE") == "$expect_sha" ]]; then
        # a repeated switch: the staged copy was removed when the key went into use
        cp -- "$MUNGE_KEY_FILE" "$key"
    else
        die "nothing staged on this node under backup id $backup_id ($staged_file): run stage-munge-key.sh first"
    fi
elif [[ $from_shared_dir == true ]]; then
    source_kind=shared-dir
    source_file=""
    for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
        if [[ -f $dir/.munge.key ]]; then
            source_file="$dir/.munge.key"
            break
        fi
    done
    [[ -n $source_file ]] || die "no shared munge key: none of $SHARED_MUNGE_DIRS holds .munge.key"
    cat -- "$source_file" >"$key"
else
    source_kind=secret
    encoded="$PRIVATE_TMPDIR/munge.key.b64"
    if ! aws secretsmanager get-secret-value --secret-id "$secret_id" --region "$region" \
        --version-stage "$version_stage" --query SecretString --output text >"$encoded" 2>"$PRIVATE_TMPDIR/aws.err"; then
        die "cannot read $version_stage of the secret: $(grep -v '^$' "$PRIVATE_TMPDIR/aws.err" | tail -n1)"
    fi
    if [[ $(wc -l <"$encoded") -gt 1 ]] || ! grep -Eq '^[A-Za-z0-9+/]+={0,2}$' "$encoded"; then
        die "the secret's $version_stage SecretString is not base64 text (a munge key secret holds base64 of the key)"
    fi
    base64 -d <"$encoded" >"$key" 2>/dev/null || die "the secret's $version_stage SecretString does not decode as base64"
fi
key_size=$(wc -c <"$key")
((key_size >= 32 && key_size <= 1024)) || die "the key is $key_size bytes: a munge key must be 32..1024 bytes"
key_sha=$(sha256_of "$key")
[[ $key_sha == "$expect_sha" ]] ||
    die "fingerprint mismatch: the key's sha256 is $key_sha, expected $expect_sha; nothing was changed"

# --- what differs
previous_sha=$(sha256_of "$MUNGE_KEY_FILE")
local_changes=false
[[ $previous_sha == "$expect_sha" ]] || local_changes=true
shared_targets=()
if [[ $shared_dirs == true ]]; then
    for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
        [[ -d $dir ]] || continue
        if [[ $(sha256_of "$dir/.munge.key") != "$expect_sha" ]]; then
            shared_targets+=("$dir/.munge.key")
        fi
    done
fi
restarted=()
held=()
# start_held_units: with --start-held, start each unit a --hold under this backup id stopped that is still
# stopped, and wait until it is ready. Only reached once this node runs the expected key.
start_held_units() {
    [[ $start_held == true ]] || return 0
    [[ -f $BACKUP_ROOT/$backup_id/manifest ]] || return 0
    backup_open "$backup_id"
    manifest_has held:slurmctld || return 0 # slurmctld is the only unit --hold takes
    unit_exists slurmctld || die "slurmctld was held under backup $backup_id, but this node has no slurmctld unit any more"
    [[ $(unit_state slurmctld) != active ]] || return 0
    CHANGED=true
    restarted+=(slurmctld)
    start_unit slurmctld || die "systemctl start slurmctld failed"
    wait_slurmctld_up $(($(now) + deadline_seconds)) || die "slurmctld did not come back: $(slurmctld_not_up_reason)"
    echo "started slurmctld again (held during the key switch)" >&2
}
if [[ $local_changes == false && ${#shared_targets[@]} -eq 0 ]]; then
    unstage
    if [[ $start_held == true ]]; then
        lock_node
        start_held_units
    fi
    result_str sha256 "$expect_sha"
    result_str_or_null previousSha256 "$previous_sha"
    result_list restarted ${restarted[@]+"${restarted[@]}"}
    [[ -z $hold_list ]] || result_list held
    result_list sharedFiles
    result_str source "$source_kind"
    [[ $from_staged != true ]] || result_list unstaged ${unstaged[@]+"${unstaged[@]}"}
    result_list prunedBackups
    finish
fi
if [[ $local_changes == true ]]; then
    [[ -d $(dirname -- "$MUNGE_KEY_FILE") ]] || die "$(dirname -- "$MUNGE_KEY_FILE") does not exist: is munge installed?"
    unit_exists munge || die "this node has no munge unit"
fi

touched=()
munge_touched=false
# rollback: put back the key files this run changed and restart with the old key (ON_FAILURE hook).
# shellcheck disable=SC2317 # called through ON_FAILURE
rollback() {
    local status=0 unit
    echo "rolling back: restoring the previous munge key" >&2
    if ((${#touched[@]} > 0)); then
        restore_paths "${touched[@]}" || status=1
    fi
    if [[ $munge_touched == true ]]; then
        restart_munge $(($(now) + deadline_seconds)) || status=1
        for unit in ${units_to_restart[@]+"${units_to_restart[@]}"}; do
            if unit_exists "$unit" && [[ $(unit_state "$unit") != inactive ]]; then
                restart_slurm_unit "$unit" $(($(now) + deadline_seconds)) || status=1
            fi
        done
    fi
    for unit in ${held[@]+"${held[@]}"}; do # stopped by this run: running again, on the old key
        restart_slurm_unit "$unit" $(($(now) + deadline_seconds)) || status=1
    done
    result_bool rolledBack true
    return "$status"
}

lock_node
backup_open "$backup_id"
ON_FAILURE=rollback
CHANGED=true
for target in ${shared_targets[@]+"${shared_targets[@]}"}; do
    backup_file "$target"
    touched+=("$target")
    if [[ -f $target ]]; then
        read -r mode uid gid <<<"$(file_identity "$target")"
        write_file_atomically "$key" "$target" "$mode" "$uid:$gid"
    else
        write_file_atomically "$key" "$target" 0600 root:root
    fi
    echo "wrote the key to $target" >&2
done
if [[ $local_changes == true ]]; then
    backup_file "$MUNGE_KEY_FILE"
    touched+=("$MUNGE_KEY_FILE")
    munge_touched=true
    for unit in ${units_to_hold[@]+"${units_to_hold[@]}"}; do
        if ! unit_exists "$unit" || ! unit_active "$unit"; then
            continue
        fi
        manifest_add "held:$unit" # first: if this run is killed while it is down, restore-backup.sh starts it
        held+=("$unit")
        stop_unit "$unit" || die "systemctl stop $unit failed"
        echo "stopped $unit until every node runs the new key (--hold)" >&2
    done
    write_file_atomically "$key" "$MUNGE_KEY_FILE" 0400 munge
    echo "wrote the key to $MUNGE_KEY_FILE; restarting munge" >&2
    restarted+=(munge)
    restart_munge $(($(now) + deadline_seconds)) || die "munge did not come back with the new key"
    for unit in ${units_to_restart[@]+"${units_to_restart[@]}"}; do
        unit_exists "$unit" || continue
        state=$(unit_state "$unit")
        if [[ $state == inactive ]]; then
            echo "not restarting $unit: it is stopped on purpose (state inactive)" >&2
            continue
        fi
        restarted+=("$unit")
        restart_slurm_unit "$unit" $(($(now) + deadline_seconds)) || die "$unit did not come back after the key change"
    done
fi

ON_FAILURE=""
unstage
start_held_units
prune_backups "$keep_backups"
result_str sha256 "$expect_sha"
result_str_or_null previousSha256 "$previous_sha"
result_list restarted ${restarted[@]+"${restarted[@]}"}
[[ -z $hold_list ]] || result_list held ${held[@]+"${held[@]}"}
result_list sharedFiles ${shared_targets[@]+"${shared_targets[@]}"}
result_str source "$source_kind"
[[ $from_staged != true ]] || result_list unstaged ${unstaged[@]+"${unstaged[@]}"}
result_list prunedBackups ${PRUNED_BACKUPS[@]+"${PRUNED_BACKUPS[@]}"}
finish
