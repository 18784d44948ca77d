#!/usr/bin/env bash
# set-accounting.sh: point this head node's slurmctld at a (shared) slurmdbd.
#
# Usage: set-accounting.sh --host HOST --port PORT --backup-id ID [--stop-local-slurmdbd | --start-local-slurmdbd]
#                          [--deadline SECONDS] [--keep-backups N]
#   --host HOST              the slurmdbd host: a host name or an IPv4 address
#   --port PORT              its DbdPort, 1..65535
#   --backup-id ID           backup name (the workflow's execution name), see restore-backup.sh
#   --stop-local-slurmdbd    afterwards stop and disable this node's own slurmdbd, if it runs
#                            (recorded in the backup: restore-backup.sh enables and starts it again)
#   --start-local-slurmdbd   first enable and start this node's own slurmdbd (HOST must be this node): a cluster
#                            leaving its federation goes back to its own accounting (undone if the change fails)
#   --deadline SECONDS       how long slurmctld gets to answer `scontrol ping` after its restart (default 120)
#   --keep-backups N         after a successful change keep the newest N backup sets of this node (1..99,
#                            default 3), this one included (see install-munge-key.sh)
#
# Sets AccountingStorageType=accounting_storage/slurmdbd, AccountingStorageHost=HOST and
# AccountingStoragePort=PORT in the file that already sets AccountingStorageType (normally
# slurm_parallelcluster.conf; see discover-slurm.sh), replacing those lines in place or appending them, and
# leaves every other byte as it was. Refuses when another file of the slurm.conf include tree also sets
# one of the three keys. Backs the file up first, writes it atomically, restarts slurmctld and waits for
# `scontrol ping` to say UP and `scontrol show config` to show the new values; if that does not happen
# before the deadline, puts the file back, restarts slurmctld again and fails.
# Slurm 24.11 and later keep "name|ClusterID" in <StateSaveLocation>/clustername and slurmctld refuses to start
# ("fatal: CLUSTER ID MISMATCH") when the slurmdbd it registers with knows the cluster under another id, which
# a different slurmdbd always does. So when the slurmdbd host or port changes and that file holds an id, it is
# backed up and removed with slurmctld stopped (the override Slurm's own message names): slurmctld then takes
# the id of the slurmdbd it now registers with. A rollback (and restore-backup.sh) puts the file back together
# with the old accounting settings, so the cluster returns to its old slurmdbd under its old id.
# Nothing to change (file and live values already right) -> "changed": false and no restart.
# Last stdout line, one JSON object: ok, changed, file, restarted (list), stoppedSlurmdbd, startedSlurmdbd,
# clusterIdReset, prunedBackups (backup ids deleted after the change) [, rolledBack, error].
# Exit status: 0 done, 1 failed (rolled back), 2 invalid input (nothing changed).
# Environment: SLURM_ETC (/opt/slurm/etc), BACKUP_ROOT (/var/lib/slurm-multicluster/backups).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

host=""
port=""
backup_id=""
stop_local_slurmdbd=false
start_local_slurmdbd=false
deadline_seconds=120
keep_backups=$KEEP_BACKUPS_DEFAULT
while (($#)); do
    case $1 in
        --host) require_value "$@"; host=$2; shift 2 ;;
        --port) require_value "$@"; port=$2; shift 2 ;;
        --backup-id) require_value "$@"; backup_id=$2; shift 2 ;;
        --deadline) require_value "$@"; deadline_seconds=$2; shift 2 ;;
        --keep-backups) require_value "$@"; keep_backups=$2; shift 2 ;;
        --stop-local-slurmdbd) stop_local_slurmdbd=true; shift ;;
        --start-local-slurmdbd) start_local_slurmdbd=true; shift ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $host ]] || die_usage "--host is required"
[[ -n $port ]] || die_usage "--port is required"
[[ -n $backup_id ]] || die_usage "--backup-id is required"
check_host "$host"
check_port "$port"
check_backup_id "$backup_id"
check_seconds --deadline "$deadline_seconds" 3600
check_keep_backups "$keep_backups"
check_path_settings
if [[ $stop_local_slurmdbd == true && $start_local_slurmdbd == true ]]; then
    die_usage "--stop-local-slurmdbd and --start-local-slurmdbd exclude each other"
fi

TYPE_LINE="AccountingStorageType=accounting_storage/slurmdbd"
HOST_LINE="AccountingStorageHost=$host"
PORT_LINE="AccountingStoragePort=$port"
restarted=()
stopped_slurmdbd=false
started_slurmdbd=false
enabled_slurmdbd=false
slurmctld_restarted=false
cluster_id_reset=false
id_file=""

# is_this_node HOST: HOST names or addresses this node (stopping our slurmdbd would then cut accounting).
is_this_node() {
    local name
    for name in localhost 127.0.0.1 "$(hostname 2>/dev/null)" "$(hostname -s 2>/dev/null)" \
        "$(hostname -f 2>/dev/null)" $(hostname -I 2>/dev/null); do
        [[ -n $name && ${1,,} == "${name,,}" ]] && return 0
    done
    return 1
}

# live_accounting_matches: slurmctld answers and runs with the wanted accounting values.
live_accounting_matches() {
    local live
    live=$(timeout 20 scontrol show config 2>/dev/null) || return 1
    [[ $(scontrol_config_value AccountingStorageType "$live") == accounting_storage/slurmdbd &&
        $(scontrol_config_value AccountingStorageHost "$live") == "$host" &&
        $(scontrol_config_value AccountingStoragePort "$live") == "$port" ]]
}

# wait_live_accounting DEADLINE: poll until the live values match.
wait_live_accounting() {
    while ! live_accounting_matches; do
        (($(now) < $1)) || return 1
        sleep "$POLL_INTERVAL"
    done
}

# rollback: undo this execution's accounting change (ON_FAILURE hook).
# shellcheck disable=SC2317 # called through ON_FAILURE
rollback() {
    local status=0
    echo "rolling back the accounting change" >&2
    RESTORED_PATHS=()
    if manifest_has "$accounting_file" || manifest_has "absent:$accounting_file" ||
        { [[ -n $id_file ]] && manifest_has "$id_file"; }; then
        restore_paths "$accounting_file" ${id_file:+"$id_file"} || status=1
    fi
    if [[ $stopped_slurmdbd == true ]]; then
        if manifest_has disabled:slurmdbd; then
            systemctl enable slurmdbd >&2 || status=1
        fi
        start_unit slurmdbd || status=1
    fi
    if [[ $started_slurmdbd == true ]]; then
        stop_unit slurmdbd || status=1
    fi
    if [[ $enabled_slurmdbd == true ]]; then
        systemctl disable slurmdbd >&2 || status=1
    fi
    if [[ $slurmctld_restarted == true || ${#RESTORED_PATHS[@]} -gt 0 ]]; then
        restart_slurm_unit slurmctld $(($(now) + deadline_seconds)) || {
            echo "error: after the rollback: $(slurmctld_not_up_reason)" >&2
            status=1
        }
    fi
    result_bool rolledBack true
    return "$status"
}

slurm_conf="$SLURM_ETC/slurm.conf"
[[ -f $slurm_conf ]] || die "no slurm.conf at $slurm_conf"
unit_exists slurmctld || die "this node has no slurmctld unit: run set-accounting.sh on the head node"
if [[ $stop_local_slurmdbd == true ]] && is_this_node "$host"; then
    die "--host $host is this node: refusing to stop the slurmdbd that accounting would point at"
fi
if [[ $start_local_slurmdbd == true ]]; then
    is_this_node "$host" || die "--start-local-slurmdbd: --host $host is not this node"
    unit_exists slurmdbd || die "--start-local-slurmdbd: this node has no slurmdbd unit (no accounting database of its own)"
fi
lock_node

mapfile -t conf_files < <(slurm_conf_tree)
accounting_file=$(accounting_file_for "${conf_files[@]}")
for key in AccountingStorageType AccountingStorageHost AccountingStoragePort; do
    while IFS= read -r file; do
        if [[ -n $file && $file != "$accounting_file" ]]; then
            die "$key is also set in $file: refusing to edit $accounting_file while another file overrides it"
        fi
    done < <(conf_files_defining "$key" "${conf_files[@]}")
done
[[ ! -L $accounting_file ]] || die "refusing to edit $accounting_file: it is a symbolic link"
if [[ -f $accounting_file ]] && grep -Eiq \
    '^[[:space:]]*AccountingStorage(Type|Host|Port)[[:space:]]*=.*[[:space:]][A-Za-z]+[[:space:]]*=' "$accounting_file"; then
    die "$accounting_file sets an AccountingStorage key on a line with other settings: edit it by hand"
fi

make_private_tmpdir
new_file="$PRIVATE_TMPDIR/accounting.conf"
if [[ -f $accounting_file ]]; then
    missing=0
    for key in AccountingStorageType AccountingStorageHost AccountingStoragePort; do
        grep -Eiq "^[[:space:]]*${key}[[:space:]]*=" "$accounting_file" || missing=$((missing + 1))
    done
    # replace the three lines where they are; append the ones that are missing
    awk -v type="$TYPE_LINE" -v host="$HOST_LINE" -v port="$PORT_LINE" '
        {
            l = tolower($0)
            if (l ~ /^[ \t]*accountingstoragetype[ \t]*=/) { print type; t = 1; next }
            if (l ~ /^[ \t]*accountingstoragehost[ \t]*=/) { print host; h = 1; next }
            if (l ~ /^[ \t]*accountingstorageport[ \t]*=/) { print port; p = 1; next }
            print
        }
        END {
            if (!t || !h || !p) print "# Slurm multi-cluster accounting (set-accounting.sh)"
            if (!t) print type
            if (!h) print host
            if (!p) print port
        }' "$accounting_file" >"$new_file"
    # awk ends every line with a newline: keep a missing final newline missing when nothing was appended
    if ((missing == 0)) && [[ -n $(tail -c1 "$accounting_file") ]]; then
        truncate -s -1 "$new_file"
    fi
else
    printf '%s\n' "# Slurm multi-cluster accounting (set-accounting.sh)" "$TYPE_LINE" "$HOST_LINE" "$PORT_LINE" >"$new_file"
fi

file_changes=true
if [[ -f $accounting_file ]] && cmp -s "$new_file" "$accounting_file"; then
    file_changes=false
fi
restart_needed=$file_changes
# the file alone is not the work: slurmctld must run with these values (a failed earlier run may have left it down)
if [[ $file_changes == false ]] && ! unit_active slurmctld; then
    echo "$accounting_file is already right but slurmctld is $(unit_state slurmctld): starting it" >&2
    restart_needed=true
elif [[ $file_changes == false ]] && ! live_accounting_matches; then
    echo "$accounting_file is already right but slurmctld runs with other accounting values" >&2
    restart_needed=true
fi

# current_endpoint: "type|host|port" slurmctld registers with now (live values, else the files').
current_endpoint() {
    local live type="" chost="" cport=""
    if unit_active slurmctld && live=$(timeout 20 scontrol show config 2>/dev/null); then
        type=$(scontrol_config_value AccountingStorageType "$live")
        chost=$(scontrol_config_value AccountingStorageHost "$live")
        cport=$(scontrol_config_value AccountingStoragePort "$live")
    else
        type=$(conf_last_value AccountingStorageType "${conf_files[@]}")
        chost=$(conf_last_value AccountingStorageHost "${conf_files[@]}")
        cport=$(conf_last_value AccountingStoragePort "${conf_files[@]}")
    fi
    printf '%s|%s|%s' "$type" "${chost,,}" "${cport:-6819}"
}

reset_cluster_id_now=false
if [[ $restart_needed == true && $(current_endpoint) != "accounting_storage/slurmdbd|${host,,}|$port" ]]; then
    id_file=$(cluster_id_file) || die "cannot tell where slurmctld keeps its cluster id"
    if cluster_id_recorded "$id_file"; then
        reset_cluster_id_now=true
    fi
fi

stop_slurmdbd_now=false
if [[ $stop_local_slurmdbd == true ]] && unit_exists slurmdbd && unit_active slurmdbd; then
    stop_slurmdbd_now=true
fi
start_slurmdbd_now=false
enable_slurmdbd_now=false
if [[ $start_local_slurmdbd == true ]]; then
    unit_active slurmdbd || start_slurmdbd_now=true
    systemctl is-enabled --quiet slurmdbd 2>/dev/null || enable_slurmdbd_now=true
fi
if [[ $file_changes == false && $restart_needed == false && $stop_slurmdbd_now == false &&
    $start_slurmdbd_now == false && $enable_slurmdbd_now == false ]]; then
    result_str file "$accounting_file"
    result_list restarted
    result_bool stoppedSlurmdbd false
    result_bool startedSlurmdbd false
    result_bool clusterIdReset false
    result_list prunedBackups
    finish
fi

backup_open "$backup_id"
ON_FAILURE=rollback
# Going back to its own accounting: slurmdbd must answer before slurmctld restarts and registers with it.
if [[ $enable_slurmdbd_now == true ]]; then
    manifest_add enabled:slurmdbd
    enabled_slurmdbd=true
    CHANGED=true
    systemctl enable slurmdbd >&2 || die "systemctl enable slurmdbd failed"
fi
if [[ $start_slurmdbd_now == true ]]; then
    manifest_add started:slurmdbd
    started_slurmdbd=true
    CHANGED=true
    restarted+=(slurmdbd)
    start_unit slurmdbd || die "systemctl start slurmdbd failed"
    wait_unit_active slurmdbd $(($(now) + deadline_seconds)) || die "the local slurmdbd is not active after its start"
    echo "enabled and started the local slurmdbd" >&2
fi

if [[ $file_changes == true ]]; then
    backup_file "$accounting_file"
    if [[ -f $accounting_file ]]; then
        read -r mode uid gid <<<"$(file_identity "$accounting_file")"
        write_file_atomically "$new_file" "$accounting_file" "$mode" "$uid:$gid"
    else
        write_file_atomically "$new_file" "$accounting_file" 0644
    fi
    CHANGED=true
    echo "updated $accounting_file" >&2
fi

if [[ $restart_needed == true ]]; then
    CHANGED=true
    deadline=$(($(now) + deadline_seconds))
    restarted+=(slurmctld)
    slurmctld_restarted=true
    if [[ $reset_cluster_id_now == true ]]; then
        # recorded first: if this run is killed while slurmctld is down, restore-backup.sh starts it again
        manifest_add stopped:slurmctld
        stop_unit slurmctld || die "systemctl stop slurmctld failed"
        backup_file "$id_file"
        rm -f -- "$id_file"
        cluster_id_reset=true
        echo "removed $id_file (backed up): slurmctld takes its cluster id from the slurmdbd at $host:$port" >&2
        start_unit slurmctld || die "systemctl start slurmctld failed"
    else
        restart_unit slurmctld || die "systemctl restart slurmctld failed"
    fi
    wait_slurmctld_up "$deadline" || die "$(slurmctld_not_up_reason)"
    wait_live_accounting "$deadline" ||
        die "slurmctld is up but scontrol show config does not show AccountingStorageHost=$host AccountingStoragePort=$port"
fi

if [[ $stop_slurmdbd_now == true ]]; then
    manifest_add stopped:slurmdbd
    if systemctl is-enabled --quiet slurmdbd 2>/dev/null; then
        manifest_add disabled:slurmdbd
    fi
    stopped_slurmdbd=true
    CHANGED=true
    stop_unit slurmdbd || die "systemctl stop slurmdbd failed"
    if manifest_has disabled:slurmdbd; then
        systemctl disable slurmdbd >&2 || die "systemctl disable slurmdbd failed"
    fi
    echo "stopped and disabled the local slurmdbd" >&2
fi

ON_FAILURE=""
prune_backups "$keep_backups"
result_str file "$accounting_file"
result_list restarted ${restarted[@]+"${restarted[@]}"}
result_bool stoppedSlurmdbd "$stopped_slurmdbd"
result_bool startedSlurmdbd "$started_slurmdbd"
result_bool clusterIdReset "$cluster_id_reset"
result_list prunedBackups ${PRUNED_BACKUPS[@]+"${PRUNED_BACKUPS[@]}"}
finish
