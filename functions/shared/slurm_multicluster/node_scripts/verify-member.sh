#!/usr/bin/env bash
# verify-member.sh: prove this node's cluster works as a member of the Slurm multi-cluster, from here.
# Runs on a head node, a login node or a compute node (users submit from all three): each must reach the
# federation's slurmdbd and every peer's slurmctld, with the federation munge key.
#
# Usage: verify-member.sh --peers NAME[,NAME...] --deadline SECONDS [--interval SECONDS]
#   --peers NAMES        the Slurm ClusterNames of the other members to check
#   --deadline SECONDS   give up after this long (1..3600)
#   --interval SECONDS   pause between two rounds of checks (default 1)
#
# Polls until all of these hold at once, or fails at the deadline saying which did not:
#   1. `sacctmgr -nP show clusters format=cluster,controlhost,controlport` lists this cluster (ClusterName
#      from `scontrol show config`) and every peer, each with a ControlHost (its slurmctld registered);
#   2. `sbatch --clusters=PEER --test-only --wrap true` succeeds for every peer;
#   3. no node of this cluster is DOWN, DRAIN(ED/ING), FAIL(ING), NOT_RESPONDING (`*`) or still UNKNOWN.
#      Nodes in power saving are not checked, whatever their base state: powered down (`~`, ParallelCluster's
#      dynamic nodes with no instance, and nodes whose instance clustermgtd terminated), powering down (`%`)
#      and powering up (`#`, an instance booting: it takes the key from the shared munge dir). They run no
#      slurmd, so no key; they are reported in poweredDownNodes, never as bad.
# Read-only: submits nothing (--test-only).
# Last stdout line, one JSON object: ok, changed (false), cluster, clusters ({name: {controlHost,
# controlPort}}), submit ({peer: bool}), badNodes (["node state", ...]), poweredDownNodes (["node state", ...]),
# elapsedSeconds, mungeKeySha256 (the fingerprint of the key this node runs, never the key) [, error].
# Exit status: 0 verified, 1 not verified by the deadline, 2 invalid input.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

peers_arg=""
deadline_seconds=""
interval=1
while (($#)); do
    case $1 in
        --peers) require_value "$@"; peers_arg=$2; shift 2 ;;
        --deadline) require_value "$@"; deadline_seconds=$2; shift 2 ;;
        --interval) require_value "$@"; interval=$2; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $peers_arg ]] || die_usage "--peers is required"
[[ -n $deadline_seconds ]] || die_usage "--deadline is required"
check_seconds --deadline "$deadline_seconds" 3600
check_seconds --interval "$interval" 60
name_re=${RE_SLURM_CLUSTER#^}
name_re=${name_re%$}
check_regex --peers "$peers_arg" "^$name_re(,$name_re)*\$" "a comma-separated list of Slurm cluster names"
IFS=, read -r -a peers <<<"$peers_arg"
# the checks are about this cluster, whatever the caller's environment says
unset SLURM_CLUSTERS SBATCH_CLUSTERS SINFO_CLUSTERS SLURM_CONF_OVERRIDE 2>/dev/null || true

started=$(now)
deadline=$((started + deadline_seconds))
self=""
declare -A control_host=() control_port=() submit_ok=()
bad_nodes=()
powered_down_nodes=()
problems=()

# bounded CMD...: run CMD with a timeout of the time left (at least 1 s, at most 30 s).
bounded() {
    local left
    left=$(seconds_left "$deadline")
    ((left >= 1)) || left=1
    ((left <= 30)) || left=30
    timeout "$left" "$@"
}

check_round() {
    local live name host port peer node state base
    problems=()
    if [[ -z $self ]]; then
        live=$(bounded scontrol show config 2>/dev/null) || live=""
        self=$(scontrol_config_value ClusterName "$live")
        if [[ -z $self ]]; then
            problems+=("slurmctld does not answer scontrol show config")
            return 1
        fi
    fi

    control_host=()
    control_port=()
    if output=$(bounded sacctmgr -nP show clusters format=cluster,controlhost,controlport 2>/dev/null); then
        while IFS='|' read -r name host port _; do
            [[ -n $name ]] || continue
            control_host[$name]=$host
            control_port[$name]=$port
        done <<<"$output"
    else
        problems+=("sacctmgr cannot list the clusters (slurmdbd unreachable?)")
    fi
    for name in "$self" "${peers[@]}"; do
        if [[ -z ${control_host[$name]+set} ]]; then
            problems+=("cluster $name is not registered in accounting")
        elif [[ -z ${control_host[$name]} ]]; then
            problems+=("cluster $name has no ControlHost (its slurmctld is not connected to slurmdbd)")
        fi
    done

    for peer in "${peers[@]}"; do
        if bounded sbatch --clusters="$peer" --test-only --wrap true >/dev/null 2>&1; then
            submit_ok[$peer]=true
        else
            submit_ok[$peer]=false
            problems+=("sbatch --clusters=$peer --test-only fails")
        fi
    done

    bad_nodes=()
    powered_down_nodes=()
    if output=$(bounded sinfo -h -N -o '%N %T' 2>/dev/null); then
        while read -r node state _; do
            [[ -n $node ]] || continue
            case $state in
                *[~%#]*)
                    case " ${powered_down_nodes[*]-} " in *" $node $state "*) continue ;; esac
                    powered_down_nodes+=("$node $state")
                    continue
                    ;;
            esac
            base=${state%%[*~#%!\$@^-]*}
            base=${base,,}
            case $base in
                down | drain | drained | draining | fail | failing | not_responding | unknown) ;;
                *) [[ $state == *'*'* ]] || continue ;;
            esac
            case " ${bad_nodes[*]-} " in *" $node $state "*) continue ;; esac
            bad_nodes+=("$node $state")
        done <<<"$output"
        if ((${#bad_nodes[@]} > 0)); then
            problems+=("nodes not usable: ${bad_nodes[*]}")
        fi
    else
        problems+=("sinfo fails")
    fi
    ((${#problems[@]} == 0))
}

report() {
    local clusters="{" sep="" name submit="{"
    for name in "${!control_host[@]}"; do
        clusters+="$sep$(json_str "$name"):{\"controlHost\":$(json_str_or_null "${control_host[$name]}"),\"controlPort\":$(json_int_or_null "${control_port[$name]}")}"
        sep=","
    done
    sep=""
    for name in "${peers[@]}"; do
        submit+="$sep$(json_str "$name"):$(json_bool "${submit_ok[$name]:-false}")"
        sep=","
    done
    result_str_or_null cluster "$self"
    result_raw clusters "$clusters}"
    result_raw submit "$submit}"
    result_list badNodes ${bad_nodes[@]+"${bad_nodes[@]}"}
    result_list poweredDownNodes ${powered_down_nodes[@]+"${powered_down_nodes[@]}"}
    result_raw elapsedSeconds "$(($(now) - started))"
    result_str_or_null mungeKeySha256 "$(sha256_of "$MUNGE_KEY_FILE")"
}

while ! check_round; do
    if (($(now) >= deadline)); then
        report
        summary=$(printf '%s; ' "${problems[@]}")
        die "not verified within ${deadline_seconds}s: ${summary%; }"
    fi
    sleep "$interval"
done
report
finish
