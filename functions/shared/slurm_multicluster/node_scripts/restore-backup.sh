#!/usr/bin/env bash
# restore-backup.sh: undo everything the node scripts changed under one backup id (the saga's compensation).
#
# Usage: restore-backup.sh --backup-id ID [--deadline SECONDS] [--restart-failed] [--hold slurmctld]
#   --backup-id ID       the backup to restore (the workflow's execution name)
#   --hold slurmctld     (head node) do not start slurmctld: when the key or a Slurm config file changes back,
#                        stop it before munge restarts and leave it stopped (manifest held:slurmctld), while the
#                        compute and login nodes are switched back; a later run without --hold starts it (see
#                        install-munge-key.sh --hold)
#   --deadline SECONDS   how long each daemon gets to become ready after its restart (default 120)
#   --restart-failed     afterwards also restart munge, slurmdbd, slurmctld and slurmd where they exist and
#                        are in state "failed" (a daemon that died during the change being undone), even
#                        when nothing had to be restored or there is no backup
#
# Restores every entry of $BACKUP_ROOT/ID/manifest: files get back their exact bytes, mode and owner;
# "absent:<path>" entries (files that did not exist before) are deleted; a slurmdbd that set-accounting.sh
# stopped and disabled is enabled and started again (one it started and enabled is stopped and disabled); a
# slurmctld that install-munge-key.sh --hold stopped is started again. Then, if the munge key changed back, restarts munge
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
hold=false
while (($#)); do
    case $1 in
        --backup-id) require_value "$@"; backup_id=$2; shift 2 ;;
        --restart-failed) restart_failed=true; shift ;;
        --hold)
            require_value "$@"
            [[ $2 == slurmctld ]] || die_usage "invalid --hold: only slurmctld can be held"
            hold=true
            shift 2
            ;;
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
failed_units=()
report() {
    result_list restored ${RESTORED_PATHS[@]+"${RESTORED_PATHS[@]}"}
    result_list restarted ${restarted[@]+"${restarted[@]}"}
    result_list failedUnits ${failed_units[@]+"${failed_units[@]}"}
}

# restart UNIT: (re)start it and wait until it is ready (munge: a local round trip; slurmctld: `scontrol ping`
# UP); records it in restarted, or in failed_units when it does not come back.
restart() {
    local deadline=$(($(now) + deadline_seconds)) ok=true
    CHANGED=true
    if [[ $1 == munge ]]; then
        restart_munge "$deadline" || ok=false
    else
        restart_slurm_unit "$1" "$deadline" || ok=false
    fi
    if [[ $ok == true ]]; then
        restarted+=("$1")
    else
        failed_units+=("$1")
    fi
    [[ $ok == true ]]
}

# fail_restore MESSAGE: fail with the result so far (restored files, restarted and failed units).
fail_restore() {
    report
    die "$1"
}

# require_systemd: systemctl answers, so "no such unit" below is a fact, never a broken systemctl taken for one.
require_systemd() {
    unit_load_state munge >/dev/null ||
        fail_restore "systemctl does not answer (systemctl show -p LoadState munge printed no LoadState): no daemon can be restarted"
}

# restart_failed_units: with --restart-failed, bring back daemons that died (state failed), munge first.
restart_failed_units() {
    local unit
    [[ $restart_failed == true ]] || return 0
    require_systemd
    for unit in munge slurmdbd slurmctld slurmd; do
        case " ${restarted[*]-} ${failed_units[*]-} " in *" $unit "*) continue ;; esac
        [[ $unit != slurmctld || $hold == false ]] || continue # --hold: a later run starts it
        if unit_exists "$unit" && [[ $(unit_state "$unit") == failed ]]; then
            echo "$unit is in state failed: restarting it" >&2
            restart "$unit" || true
        fi
    done
}

# finish_restore: the result, failing (exit 1) when any daemon that had to come back did not.
finish_restore() {
    if ((${#failed_units[@]} > 0)); then
        fail_restore "did not come back after the restore of backup $backup_id: ${failed_units[*]}"
    fi
    report
    finish
}

if [[ ! -f $BACKUP_ROOT/$backup_id/manifest ]]; then
    result_bool found false
    restart_failed_units
    finish_restore
fi
result_bool found true
lock_node
backup_open "$backup_id"

# shellcheck disable=SC2119 # no arguments: every entry of the manifest
restore_paths || fail_restore "could not restore every file of backup $backup_id"
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
require_systemd

# --hold: a slurmctld that must restart on what was restored is stopped now (before munge restarts) and left
# stopped; a later run without --hold starts it, even when it has nothing left to restore
if [[ $hold == true && ($key_changed == true || $config_changed == true) ]] && unit_exists slurmctld &&
    unit_active slurmctld; then
    manifest_add held:slurmctld # first: a later run starts it even if this one is killed now
    CHANGED=true
    stop_unit slurmctld || fail_restore "systemctl stop slurmctld failed"
    echo "stopped slurmctld until the nodes run the restored key too (--hold)" >&2
fi

if [[ $key_changed == true ]]; then
    # the key is back on disk, but munged keeps the one it read at start until it restarts
    unit_exists munge || {
        failed_units+=(munge)
        fail_restore "restored $MUNGE_KEY_FILE but this node has no munge unit to restart with it"
    }
    restart munge || fail_restore "munge did not come back after restoring the key"
fi

if unit_exists slurmdbd; then
    # set-accounting.sh --start-local-slurmdbd started (and enabled) it: stop (and disable) it again.
    if manifest_has started:slurmdbd && unit_active slurmdbd; then
        CHANGED=true
        stop_unit slurmdbd || fail_restore "systemctl stop slurmdbd failed"
        echo "stopped slurmdbd again" >&2
    fi
    if manifest_has enabled:slurmdbd && systemctl is-enabled --quiet slurmdbd 2>/dev/null; then
        CHANGED=true
        systemctl disable slurmdbd >&2 || fail_restore "systemctl disable slurmdbd failed"
        echo "disabled slurmdbd again" >&2
    fi
    if manifest_has disabled:slurmdbd && ! systemctl is-enabled --quiet slurmdbd 2>/dev/null; then
        CHANGED=true
        systemctl enable slurmdbd >&2 || fail_restore "systemctl enable slurmdbd failed"
        echo "enabled slurmdbd again" >&2
    fi
    if manifest_has stopped:slurmdbd && ! unit_active slurmdbd; then
        restart slurmdbd && echo "started slurmdbd again" >&2
    elif [[ $key_changed == true ]] && unit_active slurmdbd; then
        restart slurmdbd || true
    fi
elif manifest_has stopped:slurmdbd; then
    failed_units+=(slurmdbd)
    fail_restore "set-accounting.sh stopped slurmdbd under backup $backup_id, but this node has no slurmdbd unit any more"
fi

# held: install-munge-key.sh --hold stopped slurmctld under this backup for the key switch
if [[ $key_changed == true || $config_changed == true ]] || manifest_has stopped:slurmctld ||
    manifest_has held:slurmctld; then
    slurm_units=0
    for unit in slurmctld slurmd; do
        unit_exists "$unit" || continue
        slurm_units=$((slurm_units + 1))
        [[ $unit != slurmctld || $hold == false ]] || continue # --hold: a later run starts it
        # inactive: stopped on purpose, left so, unless set-accounting.sh stopped (or install-munge-key.sh held)
        # it under this backup
        if [[ $(unit_state "$unit") != inactive ]] || manifest_has "stopped:$unit" || manifest_has "held:$unit"; then
            restart "$unit" || true
        fi
    done
    if [[ $config_changed == true ]] && ((slurm_units == 0)); then
        fail_restore "restored Slurm's configuration but this node has no slurmctld or slurmd unit to restart"
    fi
fi

restart_failed_units
finish_restore
