#!/usr/bin/env bash
# restore-backup.sh: undo everything the node scripts changed under one backup id (the saga's compensation).
#
# Usage: restore-backup.sh --backup-id ID [--deadline SECONDS] [--restart-failed]
#   --backup-id ID       the backup to restore (the workflow's execution name)
#   --deadline SECONDS   how long each daemon gets to become ready after its restart (default 120)
#   --restart-failed     afterwards also restart munge, slurmdbd, slurmctld and slurmd where they exist and
#                        are in state "failed" (a daemon that died during the change being undone), even
#                        when nothing had to be restored or there is no backup
#
# Restores every entry of $BACKUP_ROOT/ID/manifest: files get back their exact bytes, mode and owner;
# "absent:<path>" entries (files that did not exist before) are deleted; a slurmdbd that set-accounting.sh
# stopped and disabled is enabled and started again (one it started and enabled is stopped and disabled). Then, if the munge key changed back, restarts munge
# (and an active slurmdbd); if the key or a Slurm config file changed back, restarts slurmctld and slurmd
# where they exist and are not deliberately stopped (slurmctld: until `scontrol ping` says UP).
# Idempotent: what already matches the backup is left alone; a second run changes nothing. The backup
# itself is kept. No backup under that id: "changed": false.
# Last stdout line, one JSON object: ok, changed, found (bool), restored (paths), restarted (units) [, error].
# Exit status: 0 done, 1 failed, 2 invalid input (nothing changed).
# Environment: BACKUP_ROOT, MUNGE_KEY_FILE, SLURM_ETC, MUNGE_SOCKET (see common.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

backup_id=""
deadline_seconds=120
restart_failed=false
while (($#)); do
    case $1 in
        --backup-id) require_value "$@"; backup_id=$2; shift 2 ;;
        --restart-failed) restart_failed=true; shift ;;
        --deadline) require_value "$@"; deadline_seconds=$2; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $backup_id ]] || die_usage "--backup-id is required"
check_backup_id "$backup_id"
check_seconds --deadline "$deadline_seconds" 3600
check_path_settings

restarted=()
report() {
    result_list restored ${RESTORED_PATHS[@]+"${RESTORED_PATHS[@]}"}
    result_list restarted ${restarted[@]+"${restarted[@]}"}
}

# restart UNIT: restart and wait until ready, or fail the whole restore.
restart() {
    restarted+=("$1")
    if [[ $1 == munge ]]; then
        restart_munge $(($(now) + deadline_seconds)) || {
            report
            die "munge did not come back after restoring the key"
        }
    else
        restart_slurm_unit "$1" $(($(now) + deadline_seconds)) || {
            report
            die "$1 did not come back after the restore"
        }
    fi
}

# restart_failed_units: with --restart-failed, bring back daemons that died (state failed), munge first.
restart_failed_units() {
    local unit
    [[ $restart_failed == true ]] || return 0
    for unit in munge slurmdbd slurmctld slurmd; do
        case " ${restarted[*]-} " in *" $unit "*) continue ;; esac
        if unit_exists "$unit" && [[ $(unit_state "$unit") == failed ]]; then
            CHANGED=true
            echo "$unit is in state failed: restarting it" >&2
            restart "$unit"
        fi
    done
}

if [[ ! -f $BACKUP_ROOT/$backup_id/manifest ]]; then
    result_bool found false
    restart_failed_units
    report
    finish
fi
result_bool found true
lock_node
backup_open "$backup_id"

# shellcheck disable=SC2119 # no arguments: every entry of the manifest
restore_paths || {
    report
    die "could not restore every file of backup $backup_id"
}
key_changed=false
config_changed=false
for path in ${RESTORED_PATHS[@]+"${RESTORED_PATHS[@]}"}; do
    CHANGED=true
    [[ $path != "$MUNGE_KEY_FILE" ]] || key_changed=true
    [[ $path != "$SLURM_ETC"/* ]] || config_changed=true
    # slurmctld's cluster id file (set-accounting.sh): slurmctld must restart to take the old id again
    [[ $path != */clustername ]] || config_changed=true
    echo "restored $path" >&2
done

if [[ $key_changed == true ]] && unit_exists munge; then
    restart munge
fi

if unit_exists slurmdbd; then
    # set-accounting.sh --start-local-slurmdbd started (and enabled) it: stop (and disable) it again.
    if manifest_has started:slurmdbd && unit_active slurmdbd; then
        CHANGED=true
        stop_unit slurmdbd || die "systemctl stop slurmdbd failed"
        echo "stopped slurmdbd again" >&2
    fi
    if manifest_has enabled:slurmdbd && systemctl is-enabled --quiet slurmdbd 2>/dev/null; then
        CHANGED=true
        systemctl disable slurmdbd >&2 || die "systemctl disable slurmdbd failed"
        echo "disabled slurmdbd again" >&2
    fi
    if manifest_has disabled:slurmdbd && ! systemctl is-enabled --quiet slurmdbd 2>/dev/null; then
        CHANGED=true
        systemctl enable slurmdbd >&2 || die "systemctl enable slurmdbd failed"
        echo "enabled slurmdbd again" >&2
    fi
    if manifest_has stopped:slurmdbd && ! unit_active slurmdbd; then
        CHANGED=true
        restarted+=(slurmdbd)
        start_unit slurmdbd || die "systemctl start slurmdbd failed"
        wait_unit_active slurmdbd $(($(now) + deadline_seconds)) || {
            report
            die "slurmdbd is not active after its start"
        }
        echo "started slurmdbd again" >&2
    elif [[ $key_changed == true ]] && unit_active slurmdbd; then
        restart slurmdbd
    fi
fi

if [[ $key_changed == true || $config_changed == true ]]; then
    for unit in slurmctld slurmd; do
        if unit_exists "$unit" && [[ $(unit_state "$unit") != inactive ]]; then
            restart "$unit"
        fi
    done
fi

restart_failed_units
report
finish
