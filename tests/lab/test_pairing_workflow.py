"""The whole pairing workflow against real daemons: real ASL in moto, real Lambdas, real node scripts on lab
nodes through the SSM seam, real slurmctld/slurmd/slurmdbd/munged/MariaDB."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from lab import ClusterSpec, Lab
from lab.bridge import LabCloud, lab_cloud
from lab.core import DEFAULT_BASE
from lab_helpers import sha256, submit, wait_job_completed, wait_until

pytestmark = pytest.mark.lab

FEDERATION = "hpc"
ALPHA_TAGS = {"slurm-multicluster:federation": FEDERATION, "slurm-multicluster:role": "accounting"}
BETA_TAGS = {"slurm-multicluster:federation": FEDERATION}
KEY = "/etc/munge/munge.key"
SHARED_KEY = "/opt/parallelcluster/shared/.munge/.munge.key"
ACCOUNTING_CONF = "/opt/slurm/etc/slurm_parallelcluster.conf"


@contextlib.contextmanager
def fresh_lab(name: str, subnet: str, clusters: list[ClusterSpec]):
    the_lab = Lab(name, subnet, clusters, root=DEFAULT_BASE / name)
    the_lab.up()
    try:
        yield the_lab
    finally:
        the_lab.down()


def key_bytes(lab: Lab, node: str, path: str = KEY) -> bytes:
    """Read a munge key for the secret scan (kept in memory, never printed)."""
    return base64.b64decode(lab.exec(node, ["base64", "-w0", path], check=True).stdout)


def daemon(lab: Lab, node: str, unit: str) -> str:
    """The running instance of a unit (pid and start time): changes exactly when the daemon restarts."""
    return lab.exec(node, ["cat", f"/run/lab/{unit}.pid"], check=True).stdout.strip()


def our_rules(region: str = "us-east-1") -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=region)
    return ec2.describe_security_group_rules(
        Filters=[{"Name": "tag:slurm-multicluster:federation", "Values": [FEDERATION]}])["SecurityGroupRules"]


def sacctmgr_clusters(lab: Lab, node: str) -> dict[str, str]:
    out = lab.exec(node, ["sacctmgr", "-nP", "show", "clusters", "format=cluster,controlhost"], check=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line.strip())


@dataclass
class Pairing:
    """A finished pairing run and everything it left behind, for the assertions."""

    cloud: LabCloud
    result: dict[str, Any]
    logs: str
    before: dict[str, Any] = field(default_factory=dict)


def run_logged(cloud: LabCloud, execution_input: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], str]:
    """Run the workflow with the Lambdas' log lines captured (for the secret scan, not for printing)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = cloud.run(execution_input, **kwargs)
    return result, buffer.getvalue()


def events_queue(region: str = "us-east-1") -> str:
    """An SQS queue receiving every event this product publishes (to assert on them)."""
    sqs = boto3.client("sqs", region_name=region)
    queue = sqs.create_queue(QueueName="slurm-multicluster-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", region_name=region)
    events.put_rule(Name="our-events", EventPattern=json.dumps({"source": ["slurm-multicluster"]}))
    events.put_targets(Rule="our-events", Targets=[{"Id": "queue", "Arn": arn}])
    return queue


def published(queue: str, region: str = "us-east-1") -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=region)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


# ---------------------------------------------------------------- one pairing, many observations
@pytest.fixture(scope="module")
def paired(lab_host):
    """alpha (accounting) and beta paired once through the EventBridge rule; beta had a job running."""
    with fresh_lab("pairwf", "10.250.78.0/24", [
        ClusterSpec("alpha", accounting=True, computes=1),
        ClusterSpec("beta", computes=1),
    ]) as lab, lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        queue = events_queue()
        before = {
            "alpha_key": key_bytes(lab, "alpha-head"),
            "beta_key": key_bytes(lab, "beta-head"),
            "running_job": submit(lab, "beta-head", "--wrap", "sleep 6"),
        }
        wait_until(lambda: "RUNNING" in lab.exec("beta-head", ["squeue", "-h", "-o", "%T"]).stdout, 30,
                   "beta's job running before the pairing")
        result, logs = run_logged(cloud, cloud.event_for("beta"))
        pairing = Pairing(cloud, result, logs, before)
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


def wait_job_completed_on(lab: Lab, node: str, cluster: str, job_id: int) -> dict[str, str]:
    import re

    def check():
        out = lab.exec(node, ["scontrol", "-M", cluster, "show", "job", str(job_id), "--oneliner"]).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        assert fields.get("JobState") not in ("FAILED", "CANCELLED", "NODE_FAIL"), fields
        return fields if fields.get("JobState") == "COMPLETED" else None

    return wait_until(check, 60, f"job {job_id} on {cluster} COMPLETED")


def test_every_node_of_the_new_member_runs_the_federation_key(paired):
    lab = paired.cloud.lab
    federation = sha256(lab, "alpha-head", KEY)
    for node, path in (("beta-head", KEY), ("beta-head", SHARED_KEY), ("beta-compute-1", KEY)):
        assert sha256(lab, node, path) == federation, f"{node}:{path}"
    assert lab.node_states("beta")["beta-compute-1"].rstrip("*") in ("idle", "mixed", "allocated")


def test_the_job_running_during_pairing_is_not_lost(paired):
    # Slurm keeps the job across the slurmctld restarts (StateSaveLocation); it completes on beta.
    lab = paired.cloud.lab
    wait_job_completed(lab, "beta-head", paired.before["running_job"], timeout=60)


def test_a_compute_node_booted_after_pairing_joins_with_the_shared_key(paired):
    lab = paired.cloud.lab
    lab.exec("beta-compute-1", ["rm", "-f", KEY], check=True)  # a new instance: no key until boot copies it
    lab.reboot("beta-compute-1")
    assert sha256(lab, "beta-compute-1", KEY) == sha256(lab, "alpha-head", KEY)
    job = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == "beta-compute-1"


def test_least_privilege_rules_exist_and_are_tagged(paired):
    rules = our_rules()
    ports = sorted((r["FromPort"], r["ToPort"]) for r in rules)
    assert ports == [(6819, 6819), (6820, 6829), (6820, 6829)]
    assert all(r["IpProtocol"] == "tcp" and r.get("ReferencedGroupInfo") for r in rules)


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


def test_no_key_material_in_history_logs_ssm_or_events(paired):
    cloud = paired.cloud
    from lab import cloud as aws_harness

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


def assert_absent(key: bytes, text: str) -> None:
    """No 24-byte window of the key, raw, base64 (any alignment) or hex, appears in text."""
    raw = text.encode("utf-8", "surrogateescape")
    encoded = base64.b64encode(key).decode()
    for start in range(0, len(key) - 24, 24):
        window = key[start:start + 24]
        assert window not in raw, "raw munge key bytes leaked"
        assert window.hex() not in text, "hex munge key leaked"
    for start in range(0, len(encoded) - 32, 32):
        assert encoded[start:start + 32] not in text, "base64 munge key leaked"


# ---------------------------------------------------------------- changes nothing / rolls back
@pytest.fixture
def two_clusters(lab_host):
    with fresh_lab("pairfault", "10.250.79.0/24", [ClusterSpec("alpha", accounting=True), ClusterSpec("beta")]) as lab:
        yield lab


def test_dry_run_returns_the_plan_and_changes_nothing(two_clusters):
    lab = two_clusters
    keys = (sha256(lab, "beta-head", KEY), sha256(lab, "beta-compute-1", KEY))
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    ctld = daemon(lab, "beta-head", "slurmctld")
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        result, _ = run_logged(cloud, {"stackName": "beta", "region": cloud.region, "dryRun": True})
        assert result["status"] == "SUCCEEDED", result.get("cause")
        plan = json.loads(result["output"])
        assert plan["mungeKey"]["installOnHead"] is True
        assert plan["accounting"]["host"] == lab.head("alpha").ip and plan["accounting"]["change"] is True
        assert len(plan["ingressRules"]) == 3
        assert our_rules() == []
        assert boto3.client("secretsmanager", region_name=cloud.region).list_secrets()["SecretList"] == []
    assert (sha256(lab, "beta-head", KEY), sha256(lab, "beta-compute-1", KEY)) == keys
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf
    assert daemon(lab, "beta-head", "slurmctld") == ctld


def test_failed_verification_rolls_back_rules_config_and_keys(two_clusters):
    lab = two_clusters
    keys = {n: sha256(lab, n, KEY) for n in ("beta-head", "beta-compute-1")}
    shared = sha256(lab, "beta-head", SHARED_KEY)
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    # An admin drained beta's only compute node: verification must not call the pairing healthy.
    lab.exec("beta-head", ["scontrol", "update", "nodename=beta-compute-1", "state=down", "reason=maintenance"], check=True)
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}, parameters={"VerifyDeadlineSeconds": "10"}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "FAILED"
        assert result["error"] == "VerifyPairingFailed"
        assert "beta-compute-1" in result["cause"]
        assert our_rules() == []
    assert {n: sha256(lab, n, KEY) for n in keys} == keys
    assert sha256(lab, "beta-head", SHARED_KEY) == shared
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf
    lab.exec("beta-head", ["scontrol", "update", "nodename=beta-compute-1", "state=resume"], check=True)
    lab.wait_idle(["beta-compute-1"], timeout=60)
    wait_job_completed(lab, "beta-head", submit(lab, "beta-head", "--wrap", "hostname"), timeout=60)


def test_unreachable_accounting_slurmdbd_fails_clearly_before_changing_anything(two_clusters):
    lab = two_clusters
    keys = sha256(lab, "beta-head", KEY)
    lab.systemctl("alpha-head", "stop", "slurmdbd")
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "FAILED"
        assert result["error"] == "PrerequisiteFailed"
        assert "slurmdbd" in result["cause"]
        assert our_rules() == []
    assert sha256(lab, "beta-head", KEY) == keys


def test_member_in_another_region_is_paired_through_ip_rules(two_clusters):
    lab = two_clusters
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}, cluster_regions={"beta": "eu-west-1"}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "SUCCEEDED", result.get("cause")
        on_alpha, on_beta = our_rules("us-east-1"), our_rules("eu-west-1")
        # Security group references do not cross regions: each side admits the peer head node's /32.
        assert {r["CidrIpv4"] for r in on_alpha} == {f"{lab.head('beta').ip}/32"}
        assert {r["CidrIpv4"] for r in on_beta} == {f"{lab.head('alpha').ip}/32"}
        assert not any(r.get("ReferencedGroupInfo") for r in on_alpha + on_beta)
    job = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == "beta-compute-1"
