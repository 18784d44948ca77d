"""The whole pairing workflow against real daemons: real ASL in moto, real Lambdas, real node scripts on lab
nodes through the SSM seam, real slurmctld/slurmd/slurmdbd/munged/MariaDB. One pairing, many observations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from lab import ClusterSpec
from lab import cloud as aws_harness
from lab.bridge import LabCloud, lab_cloud
from lab_helpers import sha256, submit, wait_job_completed, wait_until
from pairing_helpers import (
    ENDING, end_job_before_node_switches,
    ACCOUNTING_CONF, ALPHA_TAGS, BETA_TAGS, KEY, SHARED_KEY, assert_absent, daemon, eni_groups, events_queue, fresh_lab,
    key_bytes, our_rules, published, rule_sources, run_logged, sacctmgr_clusters, wait_job_completed_on,
)

pytestmark = pytest.mark.lab

@dataclass
class Pairing:
    """A finished pairing run and everything it left behind, for the assertions."""

    cloud: LabCloud
    result: dict[str, Any]
    logs: str
    before: dict[str, Any] = field(default_factory=dict)








# ---------------------------------------------------------------- one pairing, many observations
@pytest.fixture(scope="module")
def paired(lab_host):
    """alpha (accounting) and beta paired once through the EventBridge rule; beta had a job running."""
    with fresh_lab("pairwf", "10.250.78.0/24", [
        ClusterSpec("alpha", accounting=True, computes=1, logins=1),
        ClusterSpec("beta", computes=1, logins=1),
    ]) as lab, lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        queue = events_queue()
        before = {
            "alpha_key": key_bytes(lab, "alpha-head"),
            "beta_key": key_bytes(lab, "beta-head"),
            "beta_conf": lab.exec("beta-head", ["cat", ACCOUNTING_CONF], check=True).stdout,
            # it ends right before beta's compute node switches keys, its head node on the federation key already
            "running_job": submit(lab, "beta-head", "--wrap", ENDING.format(tag="beta")),
        }
        wait_until(lambda: "RUNNING" in lab.exec("beta-head", ["squeue", "-h", "-o", "%T"]).stdout, 30,
                   "beta's job running before the pairing")
        event = cloud.event_for("beta")
        ended: list[str] = []
        cloud.before_command = end_job_before_node_switches(lab, "beta", before["running_job"], ended)
        try:
            result, logs = run_logged(cloud, event)
        finally:
            cloud.before_command = None
        before["ended during the switch"] = ended
        pairing = Pairing(cloud, result, logs, before)
        pairing.before["event"] = event
        pairing.before["events"] = published(queue)
        yield pairing


def test_pairing_succeeds_and_announces_it(paired):
    assert paired.result["status"] == "SUCCEEDED", paired.result.get("cause")
    kinds = [e["detail-type"] for e in paired.before["events"]]
    assert "Slurm Cluster Paired" in kinds


def test_accounting_lists_both_clusters_with_a_control_host(paired):
    lab = paired.cloud.lab
    clusters = sacctmgr_clusters(lab, "alpha-head")
    assert clusters.get("alpha") == lab.head("alpha").ip
    assert clusters.get("beta") == lab.head("beta").ip


def test_jobs_run_across_clusters_in_both_directions(paired):
    lab = paired.cloud.lab
    to_beta = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    fields = wait_job_completed_on(lab, "alpha-head", "beta", to_beta)
    assert fields["NodeList"] == "beta-compute-1"
    to_alpha = submit(lab, "beta-head", "--clusters=alpha", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "beta-head", "alpha", to_alpha)["NodeList"] == "alpha-compute-1"




def verification_of(cloud: LabCloud, execution_arn: str) -> dict[str, Any]:
    """What VerifyPairing returned, from the execution's history."""
    sfn = boto3.client("stepfunctions", region_name=cloud.region)
    history = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    exited = [e["stateExitedEventDetails"] for e in history if e.get("stateExitedEventDetails", {}).get("name") == "VerifyPairing"]
    return json.loads(exited[-1]["output"])["verification"]


def test_verification_proves_it_from_where_users_submit_login_and_compute_nodes_too(paired):
    checks = verification_of(paired.cloud, paired.result["executionArn"])
    for cluster, peer in (("beta", "alpha"), ("alpha", "beta")):
        for where in ("head node", "login node", "compute node"):
            assert checks[f"{cluster} {where}"]["ok"] is True
            assert checks[f"{cluster} {where}"]["submit"] == {peer: True}, (cluster, where)


def test_users_submit_across_from_login_nodes_and_from_inside_running_jobs(paired):
    lab = paired.cloud.lab
    for src, dst in (("alpha", "beta"), ("beta", "alpha")):
        job = submit(lab, f"{src}-login-1", f"--clusters={dst}", "--wrap", "hostname")
        assert wait_job_completed_on(lab, f"{src}-login-1", dst, job)["NodeList"] == f"{dst}-compute-1"
        # a pipeline: a job on src's compute node submits its next step to dst
        outer = submit(lab, f"{src}-login-1", "--chdir=/tmp", "--output=/tmp/outer-%j.out", "--wrap",
                       f"sbatch --parsable --clusters={dst} --wrap hostname")
        assert wait_job_completed(lab, f"{src}-head", outer)["NodeList"] == f"{src}-compute-1"
        inner = lab.exec(f"{src}-compute-1", ["cat", f"/tmp/outer-{outer}.out"], check=True).stdout.strip()
        assert inner.endswith(f";{dst}"), inner
        assert wait_job_completed_on(lab, f"{src}-head", dst, int(inner.split(";")[0]))["NodeList"] == f"{dst}-compute-1"


def test_every_node_of_the_new_member_runs_the_federation_key(paired):
    lab = paired.cloud.lab
    federation = sha256(lab, "alpha-head", KEY)
    for node, path in (("beta-head", KEY), ("beta-head", SHARED_KEY), ("beta-compute-1", KEY), ("beta-login-1", KEY)):
        assert sha256(lab, node, path) == federation, f"{node}:{path}"
    assert lab.node_states("beta")["beta-compute-1"].rstrip("*") in ("idle", "mixed", "allocated")


def test_the_job_running_during_pairing_is_not_lost(paired):
    """It ends while beta's head node runs the federation key and its compute node still its own: slurmctld is down
    then (held by SyncMungeKey), so slurmstepd retries the end report until slurmctld is back on the node's key;
    a slurmctld on the other key would refuse it and keep the job RUNNING."""
    lab = paired.cloud.lab
    assert paired.before["ended during the switch"], "the job was not released during beta's switch"
    fields = wait_job_completed_on(lab, "beta-head", "beta", paired.before["running_job"])
    assert fields["ExitCode"] == "0:0"


def test_a_compute_node_booted_after_pairing_joins_with_the_shared_key(paired):
    lab = paired.cloud.lab
    lab.exec("beta-compute-1", ["rm", "-f", KEY], check=True)  # a new instance: no key until boot copies it
    lab.reboot("beta-compute-1")
    assert sha256(lab, "beta-compute-1", KEY) == sha256(lab, "alpha-head", KEY)
    job = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == "beta-compute-1"


def test_least_privilege_rules_exist_and_are_tagged(paired):
    cloud = paired.cloud
    alpha, beta = cloud.clusters["alpha"], cloud.clusters["beta"]
    # Both head nodes carry the federation's group of their VPC, on top of their own.
    federation_group = eni_groups(alpha.head_instance_id) - {alpha.security_group_id}
    assert len(federation_group) == 1 and eni_groups(beta.head_instance_id) - {beta.security_group_id} == federation_group
    [federation_group] = federation_group
    rules = our_rules()
    # Only the head node groups are opened (a peer's compute nodes get nothing); only the Slurm ports: DbdPort
    # merged with the SlurmctldPort range on the accounting head, the SlurmctldPort range on the other. Sources:
    # the federation group, and the peer's node groups that do not carry it yet (login pool, compute nodes).
    assert rule_sources(rules) == {
        alpha.security_group_id: sorted([((6819, 6829), federation_group), ((6819, 6829), beta.security_group_id),
                                         ((6819, 6829), beta.login_security_group_id)]),
        beta.security_group_id: sorted([((6820, 6829), federation_group), ((6820, 6829), alpha.security_group_id),
                                        ((6820, 6829), alpha.login_security_group_id)]),
    }
    assert all(r["IpProtocol"] == "tcp" and not r["IsEgress"] for r in rules)


def test_running_the_workflow_again_changes_nothing(paired):
    lab, cloud = paired.cloud.lab, paired.cloud
    daemons = {(n, u): daemon(lab, n, u) for n, u in
               (("beta-head", "slurmctld"), ("beta-head", "munge"), ("beta-compute-1", "slurmd"), ("alpha-head", "slurmctld"))}
    rules = {r["SecurityGroupRuleId"] for r in our_rules()}
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    result, _ = run_logged(cloud, {"stackName": "beta", "region": cloud.region})
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert json.loads(result["output"])["alreadyPaired"] is True
    assert {(n, u): daemon(lab, n, u) for (n, u) in daemons} == daemons  # no restart anywhere
    assert {r["SecurityGroupRuleId"] for r in our_rules()} == rules
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf


def test_the_same_event_delivered_again_is_skipped_without_touching_a_node(paired):
    cloud = paired.cloud
    sent = len(cloud.commands)
    result, _ = run_logged(cloud, paired.before["event"])
    assert result["status"] == "SUCCEEDED"
    assert aws_harness.state_names(result["executionArn"], cloud.region)[-1] == "SkipDuplicateDelivery"
    assert len(cloud.commands) == sent


def test_no_key_material_in_history_logs_ssm_or_events(paired):
    cloud = paired.cloud
    haystack = [paired.logs, json.dumps(paired.before["events"])]
    for event in aws_harness.history(paired.result["executionArn"], cloud.region):
        haystack.append(json.dumps(event, default=str))
    ssm = boto3.client("ssm", region_name=cloud.region)
    for command in cloud.commands:
        haystack.append(json.dumps(command["Parameters"]))
        invocation = ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=command["InstanceId"])
        haystack += [invocation["StandardOutputContent"], invocation["StandardErrorContent"]]
    assert len(cloud.commands) >= 8
    text = "\n".join(haystack)
    for key in (paired.before["alpha_key"], paired.before["beta_key"]):
        assert_absent(key, text)


def slurmctld_starts(lab, node: str) -> int:
    """How many times slurmctld has started on the node (its log says so at each start)."""
    log = lab.exec(node, ["cat", "/var/log/slurm/slurmctld.out"], check=True).stdout
    return log.count("slurmctld version")


def test_update_that_regenerates_the_config_is_re_applied_with_one_restart(paired):
    lab, cloud = paired.cloud.lab, paired.cloud
    # `pcluster update-cluster` rewrites slurm_parallelcluster.conf (without our accounting lines) and restarts.
    lab.exec("beta-head", ["sh", "-c", f"cat > {ACCOUNTING_CONF}"], input=paired.before["beta_conf"], check=True)
    lab.systemctl("beta-head", "restart", "slurmctld")
    lab.wait_slurmctld("beta")
    starts = slurmctld_starts(lab, "beta-head")
    munged, slurmd = daemon(lab, "beta-head", "munge"), daemon(lab, "beta-compute-1", "slurmd")
    rules = {r["SecurityGroupRuleId"] for r in our_rules()}
    result, _ = run_logged(cloud, cloud.event_for("beta", "UPDATE_COMPLETE"))
    assert result["status"] == "SUCCEEDED", result.get("cause")
    plan = json.loads(result["output"])
    assert plan["accounting"]["change"] is True and plan["mungeKey"]["installOnHead"] is False
    assert f"AccountingStorageHost={lab.head('alpha').ip}" in lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    assert slurmctld_starts(lab, "beta-head") == starts + 1
    assert (daemon(lab, "beta-head", "munge"), daemon(lab, "beta-compute-1", "slurmd")) == (munged, slurmd)
    assert {r["SecurityGroupRuleId"] for r in our_rules()} == rules
    assert sacctmgr_clusters(lab, "alpha-head").get("beta") == lab.head("beta").ip



def test_only_head_node_roles_may_use_the_federation_secret(paired):
    cloud = paired.cloud
    secrets = boto3.client("secretsmanager", region_name=cloud.region)
    policy = json.loads(secrets.get_resource_policy(SecretId="slurm-multicluster/default/hpc/munge-key")["ResourcePolicy"])
    grants = {s["Sid"]: (sorted(s["Principal"]["AWS"]), s["Action"]) for s in policy["Statement"]}
    alpha_role, beta_role = cloud.clusters["alpha"].head_role_arn, cloud.clusters["beta"].head_role_arn
    assert grants["MemberHeadNodesReadMungeKey"][0] == sorted([alpha_role, beta_role])
    assert "secretsmanager:GetSecretValue" in grants["MemberHeadNodesReadMungeKey"][1]
    assert grants["AccountingHeadNodeWritesMungeKey"] == ([alpha_role], ["secretsmanager:PutSecretValue"])
