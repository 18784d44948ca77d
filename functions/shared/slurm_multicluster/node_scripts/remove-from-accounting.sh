#!/usr/bin/env bash
# remove-from-accounting.sh: delete a departed cluster from this head node's slurmdbd (the federation's accounting).
#
# Usage: remove-from-accounting.sh --cluster NAME --backup-id ID
#   --cluster NAME     the departed cluster's Slurm ClusterName
#   --backup-id ID     backup name (the workflow's execution name)
#
# Runs only where slurmdbd is active. First saves the cluster's associations (users, accounts, limits) with
# `sacctmgr dump` into the backup (BACKUP_ROOT/ID/sacctmgr-NAME.cfg: `sacctmgr load` restores them), then
# `sacctmgr -i delete cluster NAME`, then checks that `sacctmgr show clusters` no longer lists it.
# Its job records stay in the database (slurmdbd only marks the cluster deleted). Slurm refuses while the
# accounting still counts jobs of that cluster as running: the error says so and nothing is changed.
# Not registered (already removed) -> "changed": false.
# Last stdout line, one JSON object: ok, changed, cluster, wasRegistered, dump [, error].
# Exit status: 0 done, 1 failed (nothing changed), 2 invalid input (nothing changed).
# Environment: BACKUP_ROOT (/var/lib/slurm-multicluster/backups).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

cluster=""
backup_id=""
while (($#)); do
    case $1 in
        --cluster) require_value "$@"; cluster=$2; shift 2 ;;
        --backup-id) require_value "$@"; backup_id=$2; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $cluster ]] || die_usage "--cluster is required"
[[ -n $backup_id ]] || die_usage "--backup-id is required"
check_regex --cluster "$cluster" "$RE_SLURM_CLUSTER" "a Slurm ClusterName (letters, digits, _ and -)"
check_backup_id "$backup_id"
result_str cluster "$cluster"

unit_active slurmdbd || die "slurmdbd is not active on this node: it is not the federation's accounting host"

# registered: the cluster is listed by slurmdbd (sacctmgr answers "" for an unknown or deleted cluster).
registered() {
    local listed
    listed=$(timeout 30 sacctmgr -nP show clusters "cluster=$cluster" format=cluster) ||
        die "sacctmgr cannot reach slurmdbd"
    [[ -n $listed ]]
}

lock_node
if ! registered; then
    result_bool wasRegistered false
    result_str_or_null dump ""
    finish
fi
result_bool wasRegistered true
backup_open "$backup_id"
dump="$BACKUP_DIR/sacctmgr-$cluster.cfg"
# sacctmgr dump writes the file itself; it refuses to overwrite one from an earlier attempt.
rm -f -- "$dump"
timeout 60 sacctmgr -i dump "$cluster" "file=$dump" >/dev/null 2>&1 ||
    die "sacctmgr dump $cluster failed: its associations were not saved, so nothing was deleted"
chmod 0600 -- "$dump"
result_str dump "$dump"
# said: sacctmgr's answer on one printable line, for the error message.
said() { local s=${output//[^[:print:]]/ }; printf '%s' "${s:0:300}"; }
if ! output=$(timeout 60 sacctmgr -i delete cluster "$cluster" 2>&1); then
    die "sacctmgr delete cluster $cluster failed: $(said)"
fi
registered && die "sacctmgr still lists $cluster after deleting it: $(said)"
CHANGED=true
finish
