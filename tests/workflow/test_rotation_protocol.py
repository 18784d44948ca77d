"""Munge key rotation of a whole federation: the real rotation ASL in moto, the real Lambdas in-process, Secrets
Manager's staging labels, the federation lease; nodes simulated behind the SSM seam (simulated_nodes.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from lab import cloud
from lab.parallelcluster import ClusterInAws, create_cluster, create_network
from workflow.conftest import REGION
from workflow.test_pairing_secret import deployment_key_arn
from workflow.simulated_nodes import SimulatedFederation, SimulatedNode, sha256

FEDERATION = "hpc"
SECRET_NAME = f"slurm-multicluster/default/{FEDERATION}/munge-key"
CLUSTERS = {"alpha": "10.252.0.11", "beta": "10.252.0.21", "gamma": "10.252.0.31"}
LEASE_TABLE = "slurm-multicluster-FederationLeaseTable"  # cloud.deploy names tables <stack>-<logical id>


@dataclass
class RotationAws:
    deployment: cloud.Deployment
    federation: SimulatedFederation
    clusters: dict[str, ClusterInAws]
    commands: list[dict[str, Any]]
    initial_version: str
    logs: io.StringIO
    executions: list[str] = field(default_factory=list)

    def start(self, request: dict[str, Any] | None = None) -> str:
        arn = cloud.start_execution(self.deployment, request or {"federation": FEDERATION, "region": REGION},
                                    cloud.ROTATION_STATE_MACHINE)
        self.executions.append(arn)
        return arn

    def rotate(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        return cloud.wait_for_execution(self.start(request), REGION, timeout=120)

    def labels(self) -> dict[str, list[str]]:
        stages = boto3.client("secretsmanager", region_name=REGION).describe_secret(SecretId=SECRET_NAME)
        return {version: sorted(labels) for version, labels in stages["VersionIdsToStages"].items()}

    def current_key_sha(self) -> str:
        value = boto3.client("secretsmanager", region_name=REGION).get_secret_value(SecretId=SECRET_NAME, VersionStage="AWSCURRENT")
        return sha256(base64.b64decode(value["SecretString"]))

    def lease(self) -> dict[str, Any] | None:
        """The federation's lease item while someone holds it (a released one keeps its item, expiresAt 0)."""
        item = boto3.client("dynamodb", region_name=REGION).get_item(
            TableName=LEASE_TABLE, Key={"federation": {"S": FEDERATION}}, ConsistentRead=True).get("Item")
        return item if item and int(item["expiresAt"]["N"]) >= time.time() else None

    def node_keys(self) -> dict[str, str]:
        return {n.name: n.key_sha for n in self.federation.nodes.values()}


@pytest.fixture
def rotation_aws(aws_env: None) -> Iterator[RotationAws]:
    """alpha (accounting), beta and gamma, each a head and a compute node, paired on one key K0 (the federation
    secret's AWSCURRENT, as a pairing leaves it); the template deployed; SSM reaches the simulated nodes."""
    from slurm_multicluster import aws

    aws.client.cache_clear()
    logs = io.StringIO()
    capture = _capture_lambda_logs(logs)
    with mock_aws(config=cloud.MOTO_CONFIG):
        deployment = cloud.deploy(REGION, {"VerifyDeadlineSeconds": "10"})
        network = create_network(REGION, "10.252.0.0/24")
        key = os.urandom(1024)
        federation = SimulatedFederation(REGION, "alpha", CLUSTERS)
        federation.keys.append(key)
        federation.secret_id = SECRET_NAME
        clusters = {}
        for name, ip in CLUSTERS.items():
            tags = {"slurm-multicluster:federation": FEDERATION}
            if name == "alpha":
                tags["slurm-multicluster:role"] = "accounting"
            compute_ip = ip[:-1] + "2"
            mirror = create_cluster(network, name, ip, [compute_ip], tags)
            clusters[name] = mirror
            federation.add(SimulatedNode(f"{name}-head", name, "head", mirror.head_instance_id, sha256(key), sha256(key)))
            federation.add(SimulatedNode(f"{name}-compute-1", name, "compute", mirror.compute_instance_ids[0], sha256(key)))
        secrets = boto3.client("secretsmanager", region_name=REGION)
        secrets.create_secret(  # as a pairing of this deployment leaves it: its tag, its KMS key
            Name=SECRET_NAME, SecretString=base64.b64encode(key).decode(), KmsKeyId=deployment_key_arn(deployment),
            Tags=[{"Key": "slurm-multicluster:deployment", "Value": "default"}])
        (initial,) = secrets.describe_secret(SecretId=SECRET_NAME)["VersionIdsToStages"]
        with cloud.real_lambda_handlers(deployment), \
                cloud.ssm_runs_on(federation.execute, routable=federation.knows) as commands:
            yield RotationAws(deployment, federation, clusters, commands, initial, logs)
    logging.getLogger("slurm-multicluster").removeHandler(capture)
    aws.client.cache_clear()


def _capture_lambda_logs(buffer: io.StringIO) -> logging.Handler:
    """Every log line of the Lambdas, extras included, for the secret scan. Powertools logs to the service's
    logger and its children; nothing is imported here (the Lambdas' environment names the service)."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    handler = logging.StreamHandler(buffer)
    handler.setFormatter(LambdaPowertoolsFormatter())
    logging.getLogger("slurm-multicluster").addHandler(handler)
    return handler


def states(result: dict[str, Any]) -> list[str]:
    return cloud.state_names(result["executionArn"], REGION)


# ---------------------------------------------------------------- success


def test_rotation_moves_the_staging_labels_and_every_node_runs_the_new_key(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    aws.federation.switch_barrier = threading.Barrier(len(CLUSTERS) - 1, timeout=20)  # the peers: fan-out

    result = aws.rotate()

    assert result["status"] == "SUCCEEDED", result.get("cause")
    output = json.loads(result["output"])
    new_version = output["versionId"]
    assert new_version == str(uuid.uuid5(uuid.UUID("0b7c5a3e-58d6-4c1e-9a43-5e1f1f2b6d10"), result["executionArn"]))
    # createSecret put the new key as AWSPENDING only; AWSCURRENT moved only in finishSecret
    assert aws.federation.labels_during_switch == {aws.initial_version: ["AWSCURRENT"], new_version: ["AWSPENDING"]}
    assert aws.labels() == {aws.initial_version: ["AWSPREVIOUS"], new_version: ["AWSCURRENT"]}
    new_sha = aws.current_key_sha()
    assert new_sha != old_sha and output["sha256"] == new_sha and output["previousSha256"] == old_sha
    assert set(aws.node_keys().values()) == {new_sha}  # head and compute nodes of every member
    for cluster in CLUSTERS:
        head = aws.federation.head(cluster)
        assert head.shared_sha == new_sha and head.shared_pending_sha is None  # new compute nodes boot with it
        assert all(not n.staged for n in aws.federation.of(cluster))  # no staged copies left behind
    assert "slurmdbd" in aws.federation.head("alpha").restarts
    assert aws.lease() is None


def test_rotation_stages_everywhere_before_any_member_switches(rotation_aws):
    aws = rotation_aws
    result = aws.rotate()
    assert result["status"] == "SUCCEEDED", result.get("cause")
    calls = aws.federation.calls
    last_stage = max(t for t, _, script in calls if script == "stage-munge-key.sh")
    first_switch = min(t for t, _, script in calls if script == "install-munge-key.sh")
    assert last_stage < first_switch
    staged_on = {node for _, node, script in calls if script == "stage-munge-key.sh"}
    assert staged_on == {n.name for n in aws.federation.nodes.values()}
    order = states(result)
    assert order.index("CreatePendingKey") < order.index("StagePendingKey") < order.index("SwitchMembers") \
        < order.index("TestFederation") < order.index("FinishRotation") < order.index("ReleaseFederationLease")
    assert order[-1] == "KeyRotated"


def _head_script_times(aws, script: str) -> dict[str, tuple[float, float]]:
    """cluster -> (start, end) of ``script`` on its head node (the last run)."""
    starts = {node: t for t, node, s in aws.federation.calls if s == script and node.endswith("-head")}
    ends = {node: t for t, node, s in aws.federation.finished if s == script and node.endswith("-head")}
    return {node.removesuffix("-head"): (starts[node], ends[node]) for node in starts}


def test_the_accounting_member_switches_before_any_peer_so_every_peer_registers(rotation_aws):
    """A peer's slurmctld restarted while the federation's slurmdbd is restarting or still on the old key does not
    register (real daemons: "Association database appears down", no ControlHost for tens of seconds): the
    accounting member's head node is on the new key before any peer's head node switches."""
    aws = rotation_aws
    result = aws.rotate()

    assert result["status"] == "SUCCEEDED", result.get("cause")
    times = _head_script_times(aws, "install-munge-key.sh")
    accounting_done = times["alpha"][1]
    assert all(start > accounting_done for cluster, (start, _) in times.items() if cluster != "alpha"), times
    assert all(aws.federation.head(c).registered for c in CLUSTERS)
    order = states(result)
    assert order.index("SwitchAccountingMember") < order.index("SwitchMembers") < order.index("TestFederation")


def test_a_rollback_restores_the_accounting_member_before_any_peer(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    aws.federation.fail[("gamma-head", "install-munge-key.sh")] = "slurmctld did not come back after the key change"

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)
    times = _head_script_times(aws, "restore-backup.sh")
    assert all(start > times["alpha"][1] for cluster, (start, _) in times.items() if cluster != "alpha"), times
    assert all(aws.federation.head(c).registered for c in CLUSTERS)  # every peer registered on the old key


def test_an_accounting_member_that_cannot_switch_stops_the_peers_from_switching(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    aws.federation.fail[("alpha-head", "install-munge-key.sh")] = "slurmdbd did not come back after the key change"

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)
    assert result["error"] == "SwitchMembersFailed"
    assert "slurmdbd did not come back" in result["cause"]
    switched = {node for _, node, script in aws.federation.calls if script == "install-munge-key.sh"}
    assert switched == {"alpha-head"}  # no peer was switched to a key its slurmdbd does not run
    assert "SwitchMembers" not in states(result) and "RollBackAccountingMember" in states(result)


def test_rotating_twice_keeps_one_previous_key(rotation_aws):
    aws = rotation_aws
    first = aws.rotate()
    second = aws.rotate()
    assert first["status"] == second["status"] == "SUCCEEDED"
    first_version, second_version = (json.loads(r["output"])["versionId"] for r in (first, second))
    labels = aws.labels()
    assert labels[second_version] == ["AWSCURRENT"]
    assert labels[first_version] == ["AWSPREVIOUS"]
    assert labels[aws.initial_version] == []
    assert set(aws.node_keys().values()) == {aws.current_key_sha()}


# ---------------------------------------------------------------- failure and rollback


def assert_rolled_back(aws: RotationAws, result: dict[str, Any], old_sha: str) -> None:
    assert result["status"] == "FAILED"
    assert aws.labels()[aws.initial_version] == ["AWSCURRENT"]  # AWSCURRENT never moved
    assert aws.current_key_sha() == old_sha
    assert all("AWSPENDING" not in labels for labels in aws.labels().values())  # the failed key was discarded
    assert set(aws.node_keys().values()) == {old_sha}
    for cluster in CLUSTERS:
        head = aws.federation.head(cluster)
        assert head.shared_sha == old_sha and head.shared_pending_sha is None
        assert head.slurmctld_up
        assert all(not n.staged for n in aws.federation.of(cluster))
    order = states(result)
    assert order.index("RollBackToPreviousKey") < order.index("TestFederationOnPreviousKey") \
        < order.index("DiscardPendingKey") < order.index("ReleaseFederationLease")
    assert "FinishRotation" not in order
    assert order[-1] == "RotationFailed"
    assert aws.lease() is None


def test_a_member_that_cannot_switch_rolls_every_member_back_and_awscurrent_is_unchanged(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    aws.federation.fail[("gamma-head", "install-munge-key.sh")] = "slurmctld did not come back after the key change"

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)
    assert result["error"] == "SwitchMembersFailed"
    assert "failed on gamma " in result["cause"] and "slurmctld did not come back" in result["cause"]
    assert "alpha" not in result["cause"].split("(")[0] and "beta" not in result["cause"].split("(")[0]
    # alpha and beta had switched: they were switched back and restarted on the old key
    for cluster in ("alpha", "beta"):
        assert aws.federation.head(cluster).restarts[-2:] == ["munge", "slurmctld"]


def test_a_rollback_that_cannot_restore_a_member_is_counted_where_its_alarm_pages_someone(rotation_aws, capfd):
    aws = rotation_aws
    aws.federation.fail[("gamma-head", "install-munge-key.sh")] = "slurmctld did not come back after the key change"
    aws.federation.fail[("gamma-head", "restore-backup.sh")] = "the backup's disk is gone"

    result = aws.rotate()

    assert result["status"] == "FAILED"
    assert "ROLLBACK INCOMPLETE" in result["cause"]
    assert "ReportRollbackIncomplete" in states(result)
    emf = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{") and '"_aws"' in line]
    counted = [(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], m["Name"], d.get("service"))
               for d in emf for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert ("SlurmMulticluster", "RollbackIncomplete", "slurm-multicluster") in counted
    alarm = cloud.load_template()["Resources"]["RollbackIncompleteAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"]) == (
        "SlurmMulticluster", "RollbackIncomplete", [{"Name": "service", "Value": "slurm-multicluster"}])
    assert aws.lease() is None  # the rest of the compensation still ran


def test_a_member_whose_slurmctld_dies_after_the_switch_fails_the_test_and_rolls_everyone_back(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    aws.federation.slurmctld_dies_after_switch.add("beta")

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)
    assert result["error"] == "TestFederationFailed"
    assert "beta: " in result["cause"]


def test_a_member_that_cannot_stage_fails_before_any_member_switches(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    aws.federation.fail[("beta-compute-1", "stage-munge-key.sh")] = "no space left on device"

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)
    assert result["error"] == "StagePendingKeyFailed"
    assert "failed on beta " in result["cause"]
    assert not any(script == "install-munge-key.sh" for _, _, script in aws.federation.calls)
    assert all(n.restarts == [] for n in aws.federation.nodes.values())  # nobody was restarted


def test_a_federation_whose_members_run_different_keys_is_refused_unchanged(rotation_aws):
    aws = rotation_aws
    aws.federation.head("gamma").key_sha = "0" * 64  # gamma was never paired
    labels = aws.labels()

    result = aws.rotate()

    assert result["status"] == "FAILED"
    assert result["error"] == "PrepareRotationFailed"
    assert "gamma" in result["cause"] and "pair" in result["cause"]
    assert aws.labels() == labels
    assert "CreatePendingKey" not in states(result)
    assert aws.lease() is None


# ---------------------------------------------------------------- the federation lease


def test_a_concurrent_rotation_of_the_same_federation_is_refused(rotation_aws):
    aws = rotation_aws
    aws.federation.switch_gate = threading.Event()
    first = aws.start()
    assert aws.federation.switch_started.wait(timeout=60), "the first rotation never reached SwitchMembers"
    versions_before = set(aws.labels())

    second = cloud.wait_for_execution(aws.start(), REGION, timeout=60)

    assert second["status"] == "FAILED"
    assert second["error"] == "FederationBusy"
    assert "rotation" in second["cause"] and first.rsplit(":", 1)[1] in second["cause"]
    assert states(second) == ["NormalizeRotationRequest", "AcquireFederationLease", "RotationRefused"]
    assert set(aws.labels()) == versions_before  # the refused rotation created no key
    assert aws.lease()["holder"]["S"] == first.rsplit(":", 1)[1]  # and did not release the first one's lease
    aws.federation.switch_gate.set()
    done = cloud.wait_for_execution(first, REGION, timeout=120)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert aws.lease() is None


def test_a_rotation_is_refused_while_a_pairing_holds_the_lease(rotation_aws):
    from slurm_multicluster import lease

    aws = rotation_aws
    lease.acquire(boto3.client("dynamodb", region_name=REGION), LEASE_TABLE,
                  FEDERATION, "pairing-of-delta", "pairing", 3600)
    labels = aws.labels()

    result = aws.rotate()

    assert result["status"] == "FAILED" and result["error"] == "FederationBusy"
    assert "pairing pairing-of-delta" in result["cause"]
    assert aws.labels() == labels
    assert aws.commands == []  # no node was contacted
    assert aws.lease()["holder"]["S"] == "pairing-of-delta"


def test_an_expired_lease_does_not_block_the_rotation(rotation_aws):
    from slurm_multicluster import lease

    aws = rotation_aws
    lease.acquire(boto3.client("dynamodb", region_name=REGION), LEASE_TABLE,
                  FEDERATION, "crashed-execution", "pairing", 60, now=time.time() - 3600)

    result = aws.rotate()

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert aws.lease() is None


# ---------------------------------------------------------------- input and secrets


@pytest.mark.parametrize("request_", [
    {"federation": "hpc;reboot", "region": REGION},
    {"federation": "$(id)", "region": REGION},
    {"federation": FEDERATION, "region": "us-east-1; rm -rf /"},
    {"federation": FEDERATION, "region": REGION, "trigger": "cron"},
    {"federation": FEDERATION, "region": REGION, "extra": "unexpected"},
    {"region": REGION},
])
def test_hostile_rotation_requests_are_rejected_before_anything_runs(rotation_aws, request_):
    aws = rotation_aws
    result = aws.rotate(request_)
    assert result["status"] == "FAILED"
    assert result["error"] == "InvalidInput"
    assert states(result) == ["NormalizeRotationRequest"]
    assert aws.commands == [] and aws.lease() is None


def test_the_daily_check_rotates_exactly_the_federations_whose_key_is_due(rotation_aws, capfd):
    import datetime

    from lab.parallelcluster import declare_federation
    from slurm_multicluster import rotation
    from slurm_multicluster.aws import client
    from slurm_multicluster.settings import Settings

    aws = rotation_aws
    declare_federation(REGION, FEDERATION, aws.clusters["alpha"].stack_id, rotationDays=30)
    config = Settings(deployment_region=REGION)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert rotation.rotations_due(client, config, now) == []  # the key was created a moment ago
    due = rotation.rotations_due(client, config, now + datetime.timedelta(days=31))
    assert [(d["federation"], d["rotationDays"]) for d in due] == [(FEDERATION, 30)]
    declare_federation(REGION, FEDERATION, aws.clusters["alpha"].stack_id)  # no rotationDays: never due
    assert rotation.rotations_due(client, config, now + datetime.timedelta(days=3650)) == []

    # What the schedule invokes, as the template wires it: nothing is due today, so nothing starts.
    function = aws.deployment.functions["StartDueRotationsFunction"]
    payload = boto3.client("lambda", region_name=REGION).invoke(FunctionName=function, Payload=b"{}")["Payload"].read()
    assert json.loads(payload) == {"started": []}
    # ... and it reports every federation's key age, one metric each, as the dashboard's search finds it
    emf = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{") and '"_aws"' in line]
    ages = [(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], sorted(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]),
             d["federation"], d["MungeKeyAgeDays"]) for d in emf if "MungeKeyAgeDays" in d]
    assert ages == [("SlurmMulticluster", ["federation", "service"], FEDERATION, [0.0])]  # EMF: a list
    body = cloud.load_template()["Resources"]["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    assert r"""SEARCH('{SlurmMulticluster,federation,service} MetricName=\"MungeKeyAgeDays\"'""" in body
    template = cloud.load_template()["Resources"]["StartDueRotationsFunction"]["Properties"]
    assert template["Events"]["RotationCheck"]["Properties"]["Schedule"] == {"Ref": "RotationCheckSchedule"}

    # A due federation's rotation, under its scheduled name: it rotates, and a second start that day is the same one.
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = aws.deployment.state_machines[cloud.ROTATION_STATE_MACHINE]
    name = rotation.scheduled_execution_name(FEDERATION, now)
    arn = rotation.start_rotation(sfn, machine, FEDERATION, REGION, "schedule", name)
    assert cloud.wait_for_execution(arn, REGION, timeout=120)["status"] == "SUCCEEDED"
    assert rotation.start_rotation(sfn, machine, FEDERATION, REGION, "schedule", name) == arn


def test_no_key_material_in_history_logs_or_ssm_commands(rotation_aws):
    aws = rotation_aws
    aws.rotate()
    aws.federation.fail[("beta-head", "install-munge-key.sh")] = "injected"
    aws.rotate()  # a rollback too
    assert len(aws.federation.keys) == 3
    haystack = [aws.logs.getvalue()]
    for arn in aws.executions:
        haystack += [json.dumps(e, default=str) for e in cloud.history(arn, REGION)]
    ssm = boto3.client("ssm", region_name=REGION)
    for command in aws.commands:
        haystack.append(json.dumps(command["Parameters"]))
        invocation = ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=command["InstanceId"])
        haystack += [invocation["StandardOutputContent"], invocation["StandardErrorContent"]]
    text = "\n".join(haystack)
    assert "rotation plan" in aws.logs.getvalue() and "currentSha256" in aws.logs.getvalue()  # extras too
    assert "CreatePendingKey" in text and "create-pending-munge-key.sh" in text
    for key in aws.federation.keys:
        encoded = base64.b64encode(key).decode()
        for start in range(0, len(encoded) - 32, 32):
            assert encoded[start:start + 32] not in text, "base64 munge key leaked"
        for start in range(0, len(key) - 24, 24):
            assert key[start:start + 24].hex() not in text, "hex munge key leaked"
