#!/usr/bin/env bash
# discover-slurm.sh: report this head node's Slurm and munge facts. Read-only: changes nothing.
#
# Usage: discover-slurm.sh [--help]
#
# Live values come from `scontrol show config` (slurmctld's view); when slurmctld does not answer they
# are read from slurm.conf and the files it includes ("configSource": "files").
# Last stdout line, one JSON object:
#   ok, changed (always false), clusterName, slurmctldHost, slurmctldAddr, slurmctldPort ("6820-6829"),
#   accountingStorageType, accountingStorageHost, accountingStoragePort (int or null),
#   accountingFile (the file setting AccountingStorageType, else where such lines go:
#   slurm_parallelcluster.conf when slurm.conf includes it, else slurm.conf), accountingDefinedIn (files
#   setting any AccountingStorageType/Host/Port), dbdPort (int or null, from slurmdbd.conf),
#   slurmdPort (int, SlurmdPort: 6818 unless set), srunPortRange ("LOW-HIGH" or null when SrunPortRange is unset:
#   srun then listens on ephemeral ports), slurmdbdUnit, slurmdbdActive, slurmctldActive, mungeActive (bools),
#   slurmVersion, slurmdbdVersion,
#   mungeVersion, mungeKeySha256 (fingerprint only, never key bytes), sharedMungeKeys ("<file>=<sha256>" of
#   each shared copy compute and login nodes boot from, "<file>=" when the dir exists without a key), configSource,
#   registeredClusters (where this node runs an active slurmdbd: "name=ControlHost" of every cluster in its
#   accounting, ControlHost empty when that cluster's slurmctld is not connected; else an empty list),
#   queueSubnetIds (sorted, unique: every Networking.SubnetIds of every queue's compute resources in
#   ParallelCluster's fleet-config.json, where a queue's launch template names only its first subnet; [] when
#   the file is absent; anything there that is not a list of subnet ids fails the script).
# Environment: SLURM_ETC (/opt/slurm/etc), MUNGE_KEY_FILE (/etc/munge/munge.key),
#   FLEET_CONFIG_FILE (/etc/parallelcluster/slurm_plugin/fleet-config.json).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

parse_help_only "$@"
check_path_settings

slurm_conf="$SLURM_ETC/slurm.conf"
[[ -f $slurm_conf ]] || die "no slurm.conf at $slurm_conf"
mapfile -t conf_files < <(slurm_conf_tree)

# --- live configuration, else the files
config_source=scontrol
live=$(timeout 20 scontrol show config 2>/dev/null) || live=""
if [[ -n $live ]] && [[ -n $(scontrol_config_value ClusterName "$live") ]]; then
    cluster_name=$(scontrol_config_value ClusterName "$live")
    ctld_host=$(scontrol_config_value 'SlurmctldHost[0]' "$live")
    ctld_port=$(scontrol_config_value SlurmctldPort "$live")
    acct_type=$(scontrol_config_value AccountingStorageType "$live")
    acct_host=$(scontrol_config_value AccountingStorageHost "$live")
    acct_port=$(scontrol_config_value AccountingStoragePort "$live")
    slurmd_port=$(scontrol_config_value SlurmdPort "$live")
    srun_range=$(scontrol_config_value SrunPortRange "$live")
    slurm_version=$(scontrol_config_value SLURM_VERSION "$live")
else
    config_source=files
    cluster_name=$(conf_last_value ClusterName "${conf_files[@]}")
    ctld_host=$(conf_last_value SlurmctldHost "${conf_files[@]}")
    [[ -n $ctld_host ]] || ctld_host=$(conf_last_value ControlMachine "${conf_files[@]}")
    ctld_port=$(conf_last_value SlurmctldPort "${conf_files[@]}")
    acct_type=$(conf_last_value AccountingStorageType "${conf_files[@]}")
    acct_host=$(conf_last_value AccountingStorageHost "${conf_files[@]}")
    acct_port=$(conf_last_value AccountingStoragePort "${conf_files[@]}")
    slurmd_port=$(conf_last_value SlurmdPort "${conf_files[@]}")
    srun_range=$(conf_last_value SrunPortRange "${conf_files[@]}")
    slurm_version=""
fi
# SlurmctldHost is "name(address)" or "name"
ctld_addr=""
if [[ $ctld_host =~ ^([^\(]*)\((.*)\)$ ]]; then
    ctld_host=${BASH_REMATCH[1]}
    ctld_addr=${BASH_REMATCH[2]}
fi
[[ -n $ctld_port ]] || ctld_port=6817
[[ $acct_port != 0 ]] || acct_port=""
[[ -n $slurmd_port ]] || slurmd_port=6818 # slurmd's default
if ! [[ $slurmd_port =~ ^[0-9]{1,5}$ ]] || ((10#$slurmd_port < 1 || 10#$slurmd_port > 65535)); then
    die "SlurmdPort is not a port: $(sanitize "$slurmd_port")"
fi
[[ $srun_range != 0-0 ]] || srun_range="" # scontrol's way of saying unset
if [[ -n $srun_range ]]; then
    if ! [[ $srun_range =~ ^([0-9]{1,5})-([0-9]{1,5})$ ]] ||
        ((10#${BASH_REMATCH[1]} < 1 || 10#${BASH_REMATCH[1]} > 10#${BASH_REMATCH[2]} || 10#${BASH_REMATCH[2]} > 65535)); then
        die "SrunPortRange is not LOW-HIGH: $(sanitize "$srun_range")"
    fi
fi
if [[ -z $slurm_version ]]; then
    slurm_version=$(timeout 10 scontrol --version 2>/dev/null | awk '{print $NF}' | head -n1) || slurm_version=""
fi

# --- where the accounting lines live
accounting_file=$(accounting_file_for "${conf_files[@]}")
defined_in=()
for key in AccountingStorageType AccountingStorageHost AccountingStoragePort; do
    while IFS= read -r file; do
        [[ -n $file ]] || continue
        case " ${defined_in[*]-} " in *" $file "*) ;; *) defined_in+=("$file") ;; esac
    done < <(conf_files_defining "$key" "${conf_files[@]}")
done

# --- slurmdbd
dbd_port=""
slurmdbd_conf="$SLURM_ETC/slurmdbd.conf"
if [[ -f $slurmdbd_conf ]]; then
    dbd_files=("$slurmdbd_conf")
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^[[:space:]]*[Ii][Nn][Cc][Ll][Uu][Dd][Ee][[:space:]]+([^[:space:]#]+) ]]; then
            target=${BASH_REMATCH[1]}
            [[ $target == /* ]] || target="$SLURM_ETC/$target"
            if [[ $target =~ $RE_ABS_PATH && $target != *..* && -f $target ]]; then
                dbd_files+=("$target")
            fi
        fi
    done <"$slurmdbd_conf"
    dbd_port=$(conf_last_value DbdPort "${dbd_files[@]}")
    [[ -n $dbd_port ]] || dbd_port=6819 # slurmdbd's default
fi
slurmdbd_unit=false
slurmdbd_active=false
if unit_exists slurmdbd; then
    slurmdbd_unit=true
    ! unit_active slurmdbd || slurmdbd_active=true
fi
slurmdbd_version=""
if [[ -f $slurmdbd_conf ]] && command -v slurmdbd >/dev/null 2>&1; then
    # -V reads slurmdbd.conf, prints the version and exits (it never starts a daemon)
    slurmdbd_version=$(SLURM_CONF="$slurm_conf" timeout 10 slurmdbd -V </dev/null 2>/dev/null |
        awk '{print $NF}' | head -n1) || slurmdbd_version=""
fi

registered=()
if [[ $slurmdbd_active == true ]]; then
    while IFS='|' read -r name host _; do
        [[ $name =~ ^[A-Za-z0-9_-]+$ ]] || continue
        [[ -z $host || $host =~ ^[A-Za-z0-9.:-]+$ ]] || continue
        registered+=("$name=$host")
    done < <(timeout 20 sacctmgr -nP show clusters format=cluster,controlhost 2>/dev/null || true)
fi

# --- the queues' subnets: ParallelCluster's fleet-config.json, {"<queue>": {"<compute resource>": {...,
# "Networking": {"SubnetIds": ["subnet-...", ...]}}}} (create-fleet ones only). Whitespace is dropped first
# (no subnet id holds any); every SubnetIds must then be a list of quoted subnet ids, else nothing is reported.
queue_subnets=()
if [[ -e $FLEET_CONFIG_FILE ]]; then
    [[ -f $FLEET_CONFIG_FILE ]] || die "$FLEET_CONFIG_FILE is not a regular file"
    (($(wc -c <"$FLEET_CONFIG_FILE") <= 4194304)) || die "$FLEET_CONFIG_FILE is larger than 4 MiB"
    fleet=$(tr -d ' \t\r\n' <"$FLEET_CONFIG_FILE")
    named=$({ grep -o '"SubnetIds":' <<<"$fleet" || true; } | wc -l)
    mapfile -t subnet_lists < <(grep -o '"SubnetIds":\[[^]]*\]' <<<"$fleet" || true)
    ((${#subnet_lists[@]} == named)) || die "$FLEET_CONFIG_FILE has a SubnetIds that is not a list of subnet ids"
    for list in ${subnet_lists[@]+"${subnet_lists[@]}"}; do
        items=${list#'"SubnetIds":['}
        items=${items%]}
        [[ -n $items ]] || continue
        IFS=, read -r -a ids <<<"$items"
        for id in "${ids[@]}"; do
            if ! [[ $id =~ ^\"([^\"]*)\"$ ]] || ! [[ ${BASH_REMATCH[1]} =~ $RE_SUBNET_ID ]]; then
                die "$FLEET_CONFIG_FILE names a subnet that is not a subnet id: $(sanitize "$id")"
            fi
            queue_subnets+=("${id:1:-1}")
        done
    done
    if ((${#queue_subnets[@]} > 0)); then
        mapfile -t queue_subnets < <(printf '%s\n' "${queue_subnets[@]}" | sort -u)
    fi
fi

slurmctld_active=false
! unit_active slurmctld || slurmctld_active=true
munge_active=false
! unit_active munge || munge_active=true
munge_version=$(munge --version 2>/dev/null | sed -n 's/^munge-\([0-9][0-9.]*\).*/\1/p' | head -n1) || munge_version=""
munge_sha=$(sha256_of "$MUNGE_KEY_FILE")
shared_keys=()
for dir in ${SHARED_DIRS[@]+"${SHARED_DIRS[@]}"}; do
    [[ -d $dir ]] || continue
    shared_keys+=("$dir/$SHARED_MUNGE_KEY_NAME=$(sha256_of "$dir/$SHARED_MUNGE_KEY_NAME")")
done

result_str_or_null clusterName "$cluster_name"
result_str_or_null slurmctldHost "$ctld_host"
result_str_or_null slurmctldAddr "$ctld_addr"
result_str slurmctldPort "$ctld_port"
result_str_or_null accountingStorageType "$acct_type"
result_str_or_null accountingStorageHost "$acct_host"
result_int_or_null accountingStoragePort "$acct_port"
result_str_or_null accountingFile "$accounting_file"
result_list accountingDefinedIn ${defined_in[@]+"${defined_in[@]}"}
result_int_or_null dbdPort "$dbd_port"
result_int_or_null slurmdPort "$((10#$slurmd_port))"
result_str_or_null srunPortRange "$srun_range"
result_bool slurmdbdUnit "$slurmdbd_unit"
result_bool slurmdbdActive "$slurmdbd_active"
result_bool slurmctldActive "$slurmctld_active"
result_bool mungeActive "$munge_active"
result_str_or_null slurmVersion "$slurm_version"
result_str_or_null slurmdbdVersion "$slurmdbd_version"
result_str_or_null mungeVersion "$munge_version"
result_str_or_null mungeKeySha256 "$munge_sha"
result_list sharedMungeKeys ${shared_keys[@]+"${shared_keys[@]}"}
result_str configSource "$config_source"
result_list registeredClusters ${registered[@]+"${registered[@]}"}
result_list queueSubnetIds ${queue_subnets[@]+"${queue_subnets[@]}"}
finish
