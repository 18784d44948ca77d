# shellcheck shell=bash disable=SC2034 # the settings and regexes are used by the scripts that source this
# common.sh: shared functions for the slurm-multicluster node scripts. Sourced by every script as
#   . "$(dirname "$0")/common.sh"
# never run on its own. Written for bash >= 4.2 (Amazon Linux 2 head nodes), GNU coreutils and util-linux.
#
# What it provides:
#   - ParallelCluster paths, each overridable by an environment variable (temp-dir tests, the lab):
#       SLURM_ETC=/opt/slurm/etc  MUNGE_KEY_FILE=/etc/munge/munge.key
#       SHARED_MUNGE_DIRS="/opt/parallelcluster/shared/.munge /opt/parallelcluster/shared_login_nodes/.munge"
#       BACKUP_ROOT=/var/lib/slurm-multicluster/backups  MUNGE_SOCKET= (empty: munge's default socket)
#       STAGING_ROOT=<BACKUP_ROOT's parent>/staged (keys staged by a rotation, not yet in use)
#       FLEET_CONFIG_FILE=/etc/parallelcluster/slurm_plugin/fleet-config.json (the queues' subnets, head node)
#   - the JSON result line (result_* to add fields, finish / die / die_usage to print it and exit)
#   - strict value checks (check_* helpers, regexes below)
#   - backups: backup_open, backup_file, manifest, restore_paths, prune_backups
#   - systemd units: unit_exists, unit_state, restart_unit, start_unit, stop_unit
#   - readiness polls with a deadline: wait_unit_active, wait_slurmctld_up, wait_munge_roundtrip
#   - the slurm.conf include tree: slurm_conf_tree, conf_files_defining, conf_last_value

SLURM_ETC="${SLURM_ETC:-/opt/slurm/etc}"
MUNGE_KEY_FILE="${MUNGE_KEY_FILE:-/etc/munge/munge.key}"
SHARED_MUNGE_DIRS="${SHARED_MUNGE_DIRS-/opt/parallelcluster/shared/.munge /opt/parallelcluster/shared_login_nodes/.munge}"
SHARED_MUNGE_KEY_NAME=".munge.key"
BACKUP_ROOT="${BACKUP_ROOT:-/var/lib/slurm-multicluster/backups}"
STAGING_ROOT="${STAGING_ROOT:-${BACKUP_ROOT%/*}/staged}"
# Name of a staged (pending) key inside a shared munge dir, next to SHARED_MUNGE_KEY_NAME.
SHARED_PENDING_KEY_NAME=".munge.key.pending"
MUNGE_SOCKET="${MUNGE_SOCKET:-}"
# Written by ParallelCluster's cookbook on the head node (attribute cluster.slurm.fleet_config_path): every
# queue's compute resources, with the subnets of the create-fleet ones.
FLEET_CONFIG_FILE="${FLEET_CONFIG_FILE:-/etc/parallelcluster/slurm_plugin/fleet-config.json}"
SHARED_DIRS=() # SHARED_MUNGE_DIRS as an array, set by check_path_settings
PATH="/opt/slurm/bin:/opt/slurm/sbin:${PATH:-/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin}"
export PATH
export LC_ALL=C
# aws CLI v2 (ParallelCluster nodes) must never wait in a pager
export AWS_PAGER=""
umask 077

SCRIPT_NAME="$(basename "$0")"
# Seconds a unit gets to stop before it is killed (a slurmd that never registered ignores SIGTERM).
STOP_GRACE_SECONDS="${STOP_GRACE_SECONDS:-30}"
# Seconds to wait for another node script holding the node lock.
LOCK_WAIT_SECONDS="${LOCK_WAIT_SECONDS:-120}"
POLL_INTERVAL=0.2

RE_BACKUP_ID='^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$'
RE_REGION='^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$'
RE_SHA256='^[0-9a-f]{64}$'
# A Secrets Manager secret name or ARN (name characters: letters, digits and /_+=.@-).
RE_SECRET_ID='^[A-Za-z0-9][A-Za-z0-9/_+=.@:-]{0,2047}$'
RE_SLURM_CLUSTER='^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'
RE_SECONDS='^[1-9][0-9]{0,4}$'
RE_ABS_PATH='^/[A-Za-z0-9._/+@-]*$'
RE_HOST_LABEL='^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$'
RE_MUNGE_CREDENTIAL='^MUNGE:[A-Za-z0-9+/]+={0,2}:$'
RE_SUBNET_ID='^subnet-[0-9a-f]{8,17}$'

CHANGED=false
RESULT_FIELDS=()
RESULT_PRINTED=false
# Name of a function that undoes this run's changes; die and an unexpected exit call it once.
ON_FAILURE=""
CLEANUP_PATHS=()
BACKUP_DIR=""
MANIFEST=""

# ---------------------------------------------------------------- JSON result

# json_str VALUE: VALUE as a JSON string literal (control characters escaped, non-ASCII bytes as "?").
json_str() {
    local s=$1 out="" c code i
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    if [[ $s == *[![:print:]]* ]]; then
        for ((i = 0; i < ${#s}; i++)); do
            c=${s:i:1}
            if [[ $c == [[:print:]] ]]; then
                out+=$c
            else
                printf -v code '%d' "'$c"
                if ((code >= 0 && code < 32)) || ((code == 127)); then
                    printf -v c '\\u%04x' "$code"
                    out+=$c
                else
                    out+='?'
                fi
            fi
        done
        s=$out
    fi
    printf '"%s"' "$s"
}

# json_str_or_null VALUE: a JSON string, or null when VALUE is empty.
json_str_or_null() {
    if [[ -z $1 ]]; then printf 'null'; else json_str "$1"; fi
}

# json_int_or_null VALUE: VALUE as a JSON number when it is a plain non-negative integer, else null.
json_int_or_null() {
    if [[ $1 =~ ^(0|[1-9][0-9]{0,17})$ ]]; then printf '%s' "$1"; else printf 'null'; fi
}

# json_bool VALUE: true for "true", false for anything else.
json_bool() {
    if [[ $1 == true ]]; then printf 'true'; else printf 'false'; fi
}

# json_str_list ITEM...: a JSON array of strings.
json_str_list() {
    local out="[" sep="" item
    for item in "$@"; do
        out+="$sep$(json_str "$item")"
        sep=","
    done
    printf '%s]' "$out"
}

# result_raw KEY JSON: add a field whose value is already JSON text.
result_raw() { RESULT_FIELDS+=("$(json_str "$1"):$2"); }
result_str() { result_raw "$1" "$(json_str "$2")"; }
result_str_or_null() { result_raw "$1" "$(json_str_or_null "$2")"; }
result_int_or_null() { result_raw "$1" "$(json_int_or_null "$2")"; }
result_bool() { result_raw "$1" "$(json_bool "$2")"; }
result_list() {
    local key=$1
    shift
    result_raw "$key" "$(json_str_list "$@")"
}

# emit_result OK [ERROR]: print the one-line JSON result (always the last stdout line).
emit_result() {
    local line field
    line="{\"ok\":$(json_bool "$1"),\"changed\":$(json_bool "$CHANGED")"
    for field in ${RESULT_FIELDS[@]+"${RESULT_FIELDS[@]}"}; do
        line+=",$field"
    done
    if [[ -n ${2:-} ]]; then
        line+=",\"error\":$(json_str "$2")"
    fi
    printf '%s}\n' "$line"
    RESULT_PRINTED=true
}

# finish: print the successful result and exit 0.
finish() {
    ON_FAILURE=""
    emit_result true
    exit 0
}

# die MESSAGE: a runtime failure. Undo this run's changes (ON_FAILURE), print the result, exit 1.
die() {
    local message=$1 hook=$ON_FAILURE
    ON_FAILURE=""
    echo "error: $message" >&2
    if [[ -n $hook ]]; then
        "$hook" || message+=" (the rollback also failed: see stderr)"
    fi
    emit_result false "$message"
    exit 1
}

# die_usage MESSAGE: an invalid input. Nothing has been changed; print the result, exit 2.
die_usage() {
    echo "error: $1" >&2
    echo "Run $SCRIPT_NAME --help for usage." >&2
    CHANGED=false
    RESULT_FIELDS=()
    emit_result false "$1"
    exit 2
}

_on_exit() {
    local status=$? hook path
    if [[ $RESULT_PRINTED != true ]]; then
        # set -e or a signal ended the script before it printed its result
        hook=$ON_FAILURE
        ON_FAILURE=""
        if [[ -n $hook ]]; then
            "$hook" || true
        fi
        ((status != 0)) || status=1
        echo "error: $SCRIPT_NAME stopped unexpectedly (exit status $status, line ${_ERR_LINE:-?})" >&2
        emit_result false "$SCRIPT_NAME stopped unexpectedly (exit status $status, line ${_ERR_LINE:-?})"
    fi
    for path in ${CLEANUP_PATHS[@]+"${CLEANUP_PATHS[@]}"}; do
        rm -rf -- "$path"
    done
    exit "$status"
}
set -o errtrace
trap _on_exit EXIT
trap '_ERR_LINE=$LINENO' ERR
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

# usage: print the script's header comment (from line 2 to the first non-comment line).
usage() {
    sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p;}}' "$0"
}

# show_help: --help prints the usage and, like every run, a JSON last line.
show_help() {
    usage
    result_bool help true
    finish
}

# The argument parsing of a script that takes no arguments but --help.
parse_help_only() {
    while (($#)); do
        case $1 in
            -h | --help) show_help ;;
            *) die_usage "unknown argument '$(sanitize "$1")'" ;;
        esac
    done
}

# make_private_tmpdir: set PRIVATE_TMPDIR to a new 0700 temp dir, removed on exit (key bytes live only there).
# Without TMPDIR it prefers /dev/shm (memory) so key bytes do not land on disk.
PRIVATE_TMPDIR=""
make_private_tmpdir() {
    local base=${TMPDIR:-}
    if [[ -z $base ]]; then
        base=/tmp
        [[ ! -d /dev/shm || ! -w /dev/shm ]] || base=/dev/shm
    fi
    PRIVATE_TMPDIR=$(mktemp -d "$base/slurm-multicluster.XXXXXXXX")
    chmod 0700 "$PRIVATE_TMPDIR"
    CLEANUP_PATHS+=("$PRIVATE_TMPDIR")
}

# ---------------------------------------------------------------- input checks

# sanitize TEXT: a short, printable rendering of untrusted text for error messages.
sanitize() {
    local s=${1//[^A-Za-z0-9._=,:\/-]/?}
    printf '%s' "${s:0:60}"
}

# require_value FLAG ARGS...: the flag must be followed by a value.
require_value() {
    (($# >= 2)) || die_usage "$1 needs a value"
}

# check_regex FLAG VALUE REGEX [WHAT]: VALUE must match REGEX entirely.
check_regex() {
    [[ $2 =~ $3 ]] || die_usage "invalid $1: must be ${4:-a value matching $3}"
}

check_backup_id() { check_regex --backup-id "$1" "$RE_BACKUP_ID" "1-80 characters from A-Za-z0-9._- starting with a letter or digit"; }
check_region() { check_regex --region "$1" "$RE_REGION" "an AWS region such as us-east-1"; }
check_sha256() { check_regex "$1" "$2" "$RE_SHA256" "64 lowercase hex digits"; }

check_secret_id() {
    check_regex --secret-id "$1" "$RE_SECRET_ID" "a Secrets Manager secret name or ARN"
    [[ $1 != *..* && $1 != *//* ]] || die_usage "invalid --secret-id: must not contain '..' or '//'"
}

# check_seconds FLAG VALUE MAX: a whole number of seconds, 1..MAX.
check_seconds() {
    check_regex "$1" "$2" "$RE_SECONDS" "a whole number of seconds from 1 to $3"
    (($2 <= $3)) || die_usage "invalid $1: must be at most $3 seconds"
}

check_port() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then
        die_usage "invalid --port: must be a TCP port from 1 to 65535"
    fi
}

# is_ipv4 VALUE: a dotted quad, each part 0..255 without leading zeros.
is_ipv4() {
    local part
    [[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || return 1
    for part in "${BASH_REMATCH[@]:1}"; do
        [[ $part =~ ^(0|[1-9][0-9]*)$ ]] && ((part <= 255)) || return 1
    done
}

# is_hostname VALUE: an RFC 1123 host name (labels of letters, digits, hyphens; 253 characters at most).
is_hostname() {
    local label rest=$1
    ((${#1} >= 1 && ${#1} <= 253)) || return 1
    # all-numeric names are only acceptable as a valid IPv4 address
    [[ $1 =~ ^[0-9.]+$ ]] && return 1
    while [[ -n $rest ]]; do
        label=${rest%%.*}
        [[ $label =~ $RE_HOST_LABEL ]] || return 1
        [[ $rest == *.* ]] || break
        rest=${rest#*.}
        [[ -n $rest ]] || return 1
    done
}

check_host() {
    is_ipv4 "$1" || is_hostname "$1" || die_usage "invalid --host: must be a host name or an IPv4 address"
}

# check_path_setting NAME VALUE: an environment path override must be a plain absolute path.
check_path_setting() {
    [[ $2 =~ $RE_ABS_PATH && $2 != *..* ]] || die_usage "invalid $1 setting: must be a plain absolute path"
}

check_path_settings() {
    local dir
    check_path_setting SLURM_ETC "$SLURM_ETC"
    check_path_setting MUNGE_KEY_FILE "$MUNGE_KEY_FILE"
    check_path_setting BACKUP_ROOT "$BACKUP_ROOT"
    check_path_setting STAGING_ROOT "$STAGING_ROOT"
    check_path_setting FLEET_CONFIG_FILE "$FLEET_CONFIG_FILE"
    if [[ -n $MUNGE_SOCKET ]]; then
        check_path_setting MUNGE_SOCKET "$MUNGE_SOCKET"
    fi
    [[ $SHARED_MUNGE_DIRS =~ ^[A-Za-z0-9._/+@\ -]*$ ]] || die_usage "invalid SHARED_MUNGE_DIRS setting"
    read -r -a SHARED_DIRS <<<"$SHARED_MUNGE_DIRS"
    for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
        check_path_setting SHARED_MUNGE_DIRS "$dir"
    done
}

# ---------------------------------------------------------------- small helpers

now() { date +%s; }

# seconds_left DEADLINE: whole seconds until DEADLINE (epoch seconds), at least 0.
seconds_left() {
    local left=$(($1 - $(now)))
    ((left > 0)) || left=0
    printf '%s' "$left"
}

# sha256_of FILE: the file's sha256 fingerprint, or nothing when it cannot be read.
sha256_of() {
    [[ -f $1 && -r $1 ]] || return 0
    sha256sum <"$1" | cut -d' ' -f1
}

# file_identity FILE: mode, owner and group of FILE ("600 0 0"), or nothing.
file_identity() {
    stat -c '%a %u %g' -- "$1" 2>/dev/null || true
}

# chown_munge FILE: munge:munge, when that user exists on this node.
chown_munge() {
    if id -u munge >/dev/null 2>&1; then
        chown munge:munge -- "$1"
    fi
}

# write_file_atomically SRC DEST MODE [OWNER]: replace DEST by a copy of SRC (temp file in DEST's dir + mv).
# OWNER is user:group, "munge" for munge:munge when that user exists, or empty to leave root.
write_file_atomically() {
    local src=$1 dest=$2 mode=$3 owner=${4:-} tmp
    tmp=$(mktemp "$(dirname -- "$dest")/.$(basename -- "$dest").XXXXXX")
    CLEANUP_PATHS+=("$tmp")
    cat -- "$src" >"$tmp"
    if [[ $owner == munge ]]; then
        chown_munge "$tmp"
    elif [[ -n $owner ]]; then
        chown -- "$owner" "$tmp"
    fi
    chmod "$mode" -- "$tmp"
    mv -f -- "$tmp" "$dest"
}

# ---------------------------------------------------------------- munge keys in Secrets Manager

# read_secret_key SECRET_ID REGION SELECTOR VALUE DEST: decode one version of a munge key secret (base64
# SecretString, ParallelCluster's MungeKeySecretArn format) into DEST and set SECRET_VERSION_ID to its version
# id (one aws call). SELECTOR is --version-stage or --version-id. Returns 1 with a message on stderr when the
# version cannot be read or is not base64; returns 3 when that version (or the secret) does not exist.
# Key bytes only ever go to files under PRIVATE_TMPDIR.
SECRET_VERSION_ID=""
read_secret_key() {
    local secret_id=$1 region=$2 selector=$3 value=$4 dest=$5 answer encoded err
    answer="$PRIVATE_TMPDIR/read.out"
    encoded="$PRIVATE_TMPDIR/read.b64"
    err="$PRIVATE_TMPDIR/read.err"
    SECRET_VERSION_ID=""
    if ! aws secretsmanager get-secret-value --secret-id "$secret_id" --region "$region" "$selector" "$value" \
        --query '[VersionId,SecretString]' --output text >"$answer" 2>"$err"; then
        rm -f -- "$answer"
        if grep -q "ResourceNotFoundException" "$err"; then
            return 3
        fi
        echo "error: cannot read $value of the secret: $(grep -v '^$' "$err" | tail -n1)" >&2
        return 1
    fi
    cut -f2- <"$answer" >"$encoded"
    SECRET_VERSION_ID=$(cut -f1 <"$answer")
    rm -f -- "$answer"
    if [[ $(wc -l <"$encoded") -gt 1 ]] || ! grep -Eq '^[A-Za-z0-9+/]+={0,2}$' "$encoded" ||
        ! base64 -d <"$encoded" >"$dest" 2>/dev/null; then
        echo "error: $value of the secret is not base64 text (a munge key secret holds base64 of the key)" >&2
        rm -f -- "$encoded"
        return 1
    fi
    rm -f -- "$encoded"
}

# key_size_ok FILE: a munge key of 32..1024 bytes.
key_size_ok() {
    local size
    size=$(wc -c <"$1")
    ((size >= 32 && size <= 1024))
}

# ---------------------------------------------------------------- node lock and backups

# lock_node: one changing node script at a time on this node (waits up to LOCK_WAIT_SECONDS).
lock_node() {
    mkdir -p -- "$BACKUP_ROOT"
    chmod 0700 -- "$BACKUP_ROOT"
    exec 9>>"$BACKUP_ROOT/.lock"
    flock -w "$LOCK_WAIT_SECONDS" 9 || die "another slurm-multicluster node script still holds $BACKUP_ROOT/.lock"
}

# backup_open ID: use $BACKUP_ROOT/ID (created 0700) and its manifest.
backup_open() {
    BACKUP_DIR="$BACKUP_ROOT/$1"
    MANIFEST="$BACKUP_DIR/manifest"
    mkdir -p -- "$BACKUP_DIR/files"
    chmod 0700 -- "$BACKUP_ROOT" "$BACKUP_DIR" "$BACKUP_DIR/files"
    [[ -f $MANIFEST ]] || : >"$MANIFEST"
}

# manifest_has LINE: LINE is already recorded in the manifest.
manifest_has() {
    [[ -f $MANIFEST ]] && grep -Fxq -- "$1" "$MANIFEST"
}

# manifest_add LINE: record LINE once.
manifest_add() {
    manifest_has "$1" || printf '%s\n' "$1" >>"$MANIFEST"
}

# backup_file PATH: before the first change of this backup id to PATH, keep a copy (mode, owner kept)
# under files/<PATH>, or record absent:<PATH> when it does not exist yet.
backup_file() {
    local path=$1 copy
    if manifest_has "$path" || manifest_has "absent:$path"; then
        return 0
    fi
    if [[ -L $path ]]; then
        die "refusing to change $path: it is a symbolic link"
    elif [[ -e $path ]]; then
        [[ -f $path ]] || die "refusing to change $path: not a regular file"
        copy="$BACKUP_DIR/files$path"
        mkdir -p -- "$(dirname -- "$copy")"
        cp -p -- "$path" "$copy.partial"
        mv -f -- "$copy.partial" "$copy"
        manifest_add "$path"
    else
        manifest_add "absent:$path"
    fi
}

# restore_paths [PATH...]: put back every file entry of the manifest (or only the PATHs given).
# Sets RESTORED_PATHS to the paths that differed and were restored.
RESTORED_PATHS=()
restore_paths() {
    local entry path copy tmp wanted
    RESTORED_PATHS=()
    [[ -f $MANIFEST ]] || return 0
    while IFS= read -r entry; do
        case $entry in
            absent:/*) path=${entry#absent:} ;;
            /*) path=$entry ;;
            *) continue ;;
        esac
        if (($# > 0)); then
            wanted=false
            for tmp in "$@"; do
                [[ $tmp == "$path" ]] && wanted=true
            done
            [[ $wanted == true ]] || continue
        fi
        if [[ $entry == absent:* ]]; then
            if [[ -e $path || -L $path ]]; then
                rm -f -- "$path" || return 1
                RESTORED_PATHS+=("$path")
            fi
            continue
        fi
        copy="$BACKUP_DIR/files$path"
        [[ -f $copy ]] || {
            echo "error: the backup copy of $path is missing" >&2
            return 1
        }
        if [[ -f $path && ! -L $path ]] && cmp -s -- "$copy" "$path" &&
            [[ $(file_identity "$copy") == "$(file_identity "$path")" ]]; then
            continue
        fi
        mkdir -p -- "$(dirname -- "$path")" || return 1
        tmp=$(mktemp "$(dirname -- "$path")/.$(basename -- "$path").XXXXXX") || return 1
        CLEANUP_PATHS+=("$tmp")
        # explicit checks: this also runs inside rollbacks, where set -e does not apply
        cp -p -- "$copy" "$tmp" || return 1
        mv -f -- "$tmp" "$path" || return 1
        RESTORED_PATHS+=("$path")
    done <"$MANIFEST"
}

# Backup sets a changing script keeps after its change succeeded (--keep-backups N, 1..99): the newest ones.
KEEP_BACKUPS_DEFAULT=3
RE_KEEP_BACKUPS='^[1-9][0-9]?$'
# A set changed this recently may still be restored by the workflow run that made it: no run that restores
# backups lasts longer than the rotation's 12 h (its TimeoutSeconds, 43200), so 14 h is past any rollback.
BACKUP_IN_FLIGHT_SECONDS=50400

check_keep_backups() { check_regex --keep-backups "$1" "$RE_KEEP_BACKUPS" "a number of backup sets from 1 to 99"; }

# prune_backups KEEP: after a successful change under BACKUP_DIR, delete the oldest backup sets (and their
# staging slots) beyond the newest KEEP, newest = latest manifest change. Never BACKUP_DIR itself (counted
# among the KEEP) and never a set changed in the last BACKUP_IN_FLIGHT_SECONDS. Best effort: a set that cannot
# be deleted is reported on stderr, never failing the change. Needs the node lock (no restore runs meanwhile).
# Sets PRUNED_BACKUPS to the deleted backup ids, oldest last.
PRUNED_BACKUPS=()
prune_backups() {
    local keep=$1 current=${BACKUP_DIR##*/} newest_first=() dir id changed kept=1 now_s
    PRUNED_BACKUPS=()
    now_s=$(now)
    for dir in "$BACKUP_ROOT"/*; do
        id=${dir##*/}
        # only sets the scripts made: a plain directory with a manifest, named as a backup id
        [[ $id != "$current" && $id =~ $RE_BACKUP_ID && -d $dir && ! -L $dir && -f $dir/manifest ]] || continue
        changed=$(stat -c %Y -- "$dir/manifest" 2>/dev/null) || continue
        newest_first+=("$changed $id")
    done
    ((${#newest_first[@]} > 0)) || return 0
    while read -r changed id; do
        if ((kept < keep)); then
            kept=$((kept + 1))
        elif ((now_s - changed < BACKUP_IN_FLIGHT_SECONDS)); then
            echo "keeping backup $id: changed $(((now_s - changed) / 60)) min ago, its run may still roll back" >&2
        elif rm -rf -- "${BACKUP_ROOT:?}/$id" "${STAGING_ROOT:?}/$id"; then
            PRUNED_BACKUPS+=("$id")
            echo "pruned backup $id" >&2
        else
            echo "warning: could not delete the old backup $BACKUP_ROOT/$id" >&2
        fi
    done < <(printf '%s\n' "${newest_first[@]}" | sort -k1,1nr -k2,2r)
}

# ---------------------------------------------------------------- systemd units

# unit_load_state UNIT: systemd's LoadState of UNIT ("loaded", "not-found", "masked", ...), parsed from
# `systemctl show -p LoadState` ("LoadState=loaded": systemd before 230 has no --value). Fails when systemctl
# gives no such line (no systemd, no D-Bus), so a broken systemctl is never taken for a missing unit.
unit_load_state() {
    local out
    out=$(systemctl show -p LoadState "$1" 2>/dev/null) || return 1
    [[ ${out%%$'\n'*} =~ ^LoadState=([a-z-]+)$ ]] || return 1
    printf '%s' "${BASH_REMATCH[1]}"
}

# unit_exists UNIT: systemd knows the unit ("loaded", not "not-found"). Dies when systemctl cannot tell.
unit_exists() {
    local state
    state=$(unit_load_state "$1") ||
        die "systemctl cannot tell whether $1 exists (systemctl show -p LoadState $1 printed no LoadState)"
    [[ $state == loaded ]]
}

# unit_state UNIT: active, inactive, failed, activating, ...
unit_state() {
    local state
    state=$(systemctl is-active "$1" 2>/dev/null) || true
    printf '%s' "${state:-unknown}"
}

unit_active() {
    systemctl is-active --quiet "$1" 2>/dev/null
}

# wait_unit_active UNIT DEADLINE: poll until the unit is active; fails at DEADLINE (epoch seconds).
wait_unit_active() {
    while ! unit_active "$1"; do
        (($(now) < $2)) || return 1
        sleep "$POLL_INTERVAL"
    done
}

# stop_unit UNIT: stop, killing it after STOP_GRACE_SECONDS if it ignores SIGTERM.
stop_unit() {
    local rc=0
    timeout "$STOP_GRACE_SECONDS" systemctl stop "$1" >&2 || rc=$?
    if ((rc == 124)); then
        echo "warning: $1 did not stop within ${STOP_GRACE_SECONDS}s; killing it" >&2
        systemctl kill --signal=SIGKILL "$1" >&2 || true
        timeout "$STOP_GRACE_SECONDS" systemctl stop "$1" >&2 || return 1
    elif ((rc != 0)); then
        return "$rc"
    fi
}

start_unit() {
    [[ $1 != slurmctld ]] || note_slurmctld_log
    timeout "$STOP_GRACE_SECONDS" systemctl start "$1" >&2
}

# restart_unit UNIT: restart; a unit that ignores SIGTERM is killed after STOP_GRACE_SECONDS, then started.
restart_unit() {
    local rc=0
    [[ $1 != slurmctld ]] || note_slurmctld_log
    timeout "$STOP_GRACE_SECONDS" systemctl restart "$1" >&2 || rc=$?
    if ((rc == 124)); then
        echo "warning: $1 did not restart within ${STOP_GRACE_SECONDS}s; killing it" >&2
        systemctl kill --signal=SIGKILL "$1" >&2 || true
        timeout "$STOP_GRACE_SECONDS" systemctl start "$1" >&2 || return 1
    elif ((rc != 0)); then
        return "$rc"
    fi
}

# slurmctld_up: the local primary slurmctld answers `scontrol ping` with UP.
slurmctld_up() {
    local out
    out=$(timeout 10 scontrol ping 2>/dev/null) || true
    [[ $out == *"is UP"* ]] && [[ $(printf '%s\n' "$out" | head -n1) == *"is UP"* ]]
}

# wait_slurmctld_up DEADLINE: poll `scontrol ping` until UP; fails at DEADLINE. On failure SLURMCTLD_FAILURE
# says what happened (slurmctld_not_up_reason).
SLURMCTLD_FAILURE=""
wait_slurmctld_up() {
    local start fatal
    start=$(now)
    SLURMCTLD_FAILURE=""
    while ! slurmctld_up; do
        # A slurmctld that exited will not answer later: say so now, with its reason, rather than at the deadline.
        if ! unit_active slurmctld; then
            fatal=$(slurmctld_fatal_since_start)
            SLURMCTLD_FAILURE="slurmctld exited $(($(now) - start))s after its start: ${fatal:-no fatal line in its log${SLURMCTLD_LOG:+ $SLURMCTLD_LOG}}"
            echo "error: $SLURMCTLD_FAILURE" >&2
            return 1
        fi
        if (($(now) >= $1)); then
            SLURMCTLD_FAILURE="slurmctld runs but did not answer scontrol ping with UP within $(($(now) - start))s"
            return 1
        fi
        sleep "$POLL_INTERVAL"
    done
}

# slurmctld_not_up_reason: what the last failed wait_slurmctld_up saw.
slurmctld_not_up_reason() {
    printf '%s' "${SLURMCTLD_FAILURE:-slurmctld did not answer scontrol ping with UP}"
}

# slurmctld_setting KEY DEFAULT: KEY as the running slurmctld reports it (`scontrol show config`), else the
# last value in the slurm.conf include tree, else DEFAULT. (scontrol is asked only while slurmctld runs: against
# a stopped one it retries for about MessageTimeout before failing.)
slurmctld_setting() {
    local value="" live
    if unit_active slurmctld && live=$(timeout 10 scontrol show config 2>/dev/null); then
        value=$(scontrol_config_value "$1" "$live")
    fi
    if [[ -z $value ]]; then
        local files
        mapfile -t files < <(slurm_conf_tree)
        ((${#files[@]} == 0)) || value=$(conf_last_value "$1" "${files[@]}")
    fi
    printf '%s' "${value:-$2}"
}

# note_slurmctld_log: remember slurmctld's log file and its size before a (re)start, so that a failure can
# be explained by what this start wrote (never by an old fatal line).
SLURMCTLD_LOG=""
SLURMCTLD_LOG_OFFSET=0
note_slurmctld_log() {
    SLURMCTLD_LOG=$(slurmctld_setting SlurmctldLogFile "")
    if [[ -n $SLURMCTLD_LOG && ( ! $SLURMCTLD_LOG =~ $RE_ABS_PATH || $SLURMCTLD_LOG == *..* ) ]]; then
        SLURMCTLD_LOG=""
    fi
    SLURMCTLD_LOG_OFFSET=0
    if [[ -n $SLURMCTLD_LOG && -f $SLURMCTLD_LOG ]]; then
        SLURMCTLD_LOG_OFFSET=$(stat -c %s -- "$SLURMCTLD_LOG" 2>/dev/null || echo 0)
    fi
}

# slurmctld_fatal_since_start: the last `fatal:` line slurmctld logged since note_slurmctld_log (printable
# characters only, at most 300), or nothing.
slurmctld_fatal_since_start() {
    [[ -n $SLURMCTLD_LOG && -f $SLURMCTLD_LOG ]] || return 0
    tail -c +$((SLURMCTLD_LOG_OFFSET + 1)) -- "$SLURMCTLD_LOG" 2>/dev/null | grep -a 'fatal:' | tail -n1 |
        sed -e 's/^\[[^]]*\] *//' | tr -cd '[:print:]' | cut -c1-300 || true
}

# ---------------------------------------------------------------- slurmctld's cluster id (Slurm >= 24.11)

# cluster_id_file: <StateSaveLocation>/clustername, where slurmctld keeps its ClusterName and, from Slurm
# 24.11 on, the cluster id its slurmdbd gave it ("name|id"). Fails for an unusual StateSaveLocation.
cluster_id_file() {
    local dir
    dir=$(slurmctld_setting StateSaveLocation /var/spool/slurmctld)
    if [[ ! $dir =~ $RE_ABS_PATH || $dir == *..* ]]; then
        echo "error: unusual StateSaveLocation '$(sanitize "$dir")'" >&2
        return 1
    fi
    printf '%s/clustername' "${dir%/}"
}

# cluster_id_recorded FILE: FILE holds a cluster id next to the name (the 24.11+ format "name|id").
cluster_id_recorded() {
    [[ -f $1 && ! -L $1 ]] && grep -q '|' -- "$1"
}

# munge_roundtrip: a credential encoded by the local munged decodes there.
munge_roundtrip() {
    local socket=()
    [[ -z $MUNGE_SOCKET ]] || socket=(--socket "$MUNGE_SOCKET")
    munge -n ${socket[@]+"${socket[@]}"} 2>/dev/null | unmunge ${socket[@]+"${socket[@]}"} >/dev/null 2>&1
}

wait_munge_roundtrip() {
    while ! munge_roundtrip; do
        (($(now) < $1)) || return 1
        sleep "$POLL_INTERVAL"
    done
}

# restart_munge DEADLINE: restart munge, wait until it is active and a local round trip works.
restart_munge() {
    restart_unit munge || return 1
    wait_unit_active munge "$1" || {
        echo "error: munge is not active after its restart" >&2
        return 1
    }
    wait_munge_roundtrip "$1" || {
        echo "error: munge is active but a local munge -n | unmunge round trip fails" >&2
        return 1
    }
}

# restart_slurm_unit UNIT DEADLINE: restart a Slurm daemon and wait until it is ready.
restart_slurm_unit() {
    restart_unit "$1" || return 1
    if [[ $1 == slurmctld ]]; then
        wait_slurmctld_up "$2" || {
            echo "error: after its restart: $(slurmctld_not_up_reason)" >&2
            return 1
        }
    else
        wait_unit_active "$1" "$2" || {
            echo "error: $1 is not active after its restart" >&2
            return 1
        }
    fi
}

# ---------------------------------------------------------------- slurm.conf and its includes

# slurm_conf_tree: slurm.conf and every file it includes (recursively), in the order Slurm reads them.
slurm_conf_tree() {
    _conf_tree_walk "$SLURM_ETC/slurm.conf" 0
}

_conf_tree_walk() {
    local file=$1 depth=$2 line target
    ((depth <= 8)) || return 0
    [[ -f $file ]] || return 0
    printf '%s\n' "$file"
    # shellcheck disable=SC2094 # only reads
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^[[:space:]]*[Ii][Nn][Cc][Ll][Uu][Dd][Ee][[:space:]]+([^[:space:]#]+) ]]; then
            target=${BASH_REMATCH[1]}
            [[ $target == /* ]] || target="${file%/*}/$target"
            if [[ $target =~ $RE_ABS_PATH && $target != *..* ]]; then
                _conf_tree_walk "$target" $((depth + 1))
            else
                echo "warning: ignoring unusual include path in $file" >&2
            fi
        fi
    done <"$file"
}

# conf_files_defining KEY FILE...: the FILEs with a line setting KEY (Slurm keys are case-insensitive).
conf_files_defining() {
    local key=$1 file
    shift
    for file in "$@"; do
        if grep -Eiq "^[[:space:]]*${key}[[:space:]]*=" -- "$file" 2>/dev/null; then
            printf '%s\n' "$file"
        fi
    done
}

# conf_last_value KEY FILE...: the value of the last line setting KEY across the FILEs (Slurm: last wins).
conf_last_value() {
    local key=$1
    shift
    awk -v key="$(printf '%s' "$key" | tr '[:upper:]' '[:lower:]')" '
        {
            line = $0
            sub(/^[ \t]+/, "", line)
            eq = index(line, "=")
            if (eq == 0) next
            name = substr(line, 1, eq - 1)
            sub(/[ \t]+$/, "", name)
            if (tolower(name) != key) next
            value = substr(line, eq + 1)
            sub(/^[ \t]+/, "", value)
            sub(/[ \t#].*$/, "", value)
            last = value
        }
        END { if (last != "") print last }
    ' "$@" 2>/dev/null || true
}

# scontrol_config_value KEY TEXT: the value of KEY in `scontrol show config` output TEXT ("(null)" -> "").
scontrol_config_value() {
    # awk reads to the end (no early exit): printf writing into a closed pipe would die of SIGPIPE (141)
    printf '%s\n' "$2" | awk -v key="$1" '
        found { next }
        {
            eq = index($0, "=")
            if (eq == 0) next
            name = substr($0, 1, eq - 1)
            sub(/[ \t]+$/, "", name)
            if (name != key) next
            value = substr($0, eq + 1)
            sub(/^[ \t]+/, "", value)
            sub(/[ \t]+$/, "", value)
            if (value != "(null)") print value
            found = 1
        }'
}

# accounting_file_for FILE...: the file that sets AccountingStorageType (the last one when several do);
# else where such lines belong: slurm_parallelcluster.conf when slurm.conf includes it, else slurm.conf.
accounting_file_for() {
    local defining file
    defining=$(conf_files_defining AccountingStorageType "$@" | tail -n1)
    if [[ -n $defining ]]; then
        printf '%s' "$defining"
        return 0
    fi
    for file in "$@"; do
        if [[ $(basename -- "$file") == slurm_parallelcluster.conf ]]; then
            printf '%s' "$file"
            return 0
        fi
    done
    printf '%s' "$SLURM_ETC/slurm.conf"
}
