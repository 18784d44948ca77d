"""One change at a time per federation, as the state machines hold it: the real ASL in moto, the real handlers
in-process, the real lease table. In the first tests SSM reaches no node, so every pairing ends at
ReadSlurmSettings, the first step after the lease; that is enough to see who got the lease, when, and that it
was given back. (A rotation refused while a pairing holds the lease: tests/workflow/test_rotation_protocol.py.)
The last ones show the fencing token: an execution that lost the lease (expired, taken over by a newer token, or
too short for its next step) changes nothing more, rolls nothing back over the new holder, and fails LeaseLost."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

from lab import cloud
from slurm_multicluster import lease
from workflow.conftest import FEDERATION_TAGS, REGION
from workflow.test_pairing_secret import pairing_aws  # noqa: F401 (the fixture)
from workflow.test_rotation_protocol import rotation_aws, states  # noqa: F401 (the fixture)
from workflow.test_unpairing_workflow import _secret_readers, federation, route  # noqa: F401 (the fixtures)

FEDERATION = FEDERATION_TAGS["slurm-multicluster:federation"]
LEASE_TABLE = "slurm-multicluster-FederationLeaseTable"  # cloud.deploy names tables <stack>-<logical id>
LEASE_RETRY_SECONDS = 15  # AcquireFederationLease's Retry on FederationBusy in statemachine/pairing.asl.json


class HeldRetryWaits:
    """Stands in for the ``time`` module of moto's Retry (which really sleeps): each Retry wait records the
    interval the ASL asked for and blocks until the test lets the waits go (or the interval passes)."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self._go = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.intervals.append(seconds)
        self._go.wait(seconds)

    def let_go(self) -> None:
        self._go.set()


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> HeldRetryWaits:
    waits = HeldRetryWaits()
    monkeypatch.setattr(retrier_decl, "time", waits)  # the module RetrierDecl._eval_body calls time.sleep on
    return waits


@pytest.fixture
def members(moto_aws):
    """alpha (accounting) and beta, tagged into the federation; beta is the cluster being paired."""
    moto_aws.cluster("alpha", "10.250.0.11", [], {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"})
    return {"beta": moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)}


def _dynamodb():
    return boto3.client("dynamodb", region_name=REGION)


def _lease_item() -> dict[str, Any] | None:
    return _dynamodb().get_item(TableName=LEASE_TABLE, Key={"federation": {"S": FEDERATION}},
                                ConsistentRead=True).get("Item")


def _live_lease() -> dict[str, Any] | None:
    return lease.holder_of(_dynamodb(), LEASE_TABLE, FEDERATION)


def _start_pairing(moto_aws, cluster) -> str:
    arn = cloud.route_event(moto_aws.deployment, cloud.stack_status_event(cluster.stack_id, "CREATE_COMPLETE", REGION))
    assert arn is not None
    return arn


def lease_attempts(execution_arn: str) -> list[str]:
    """Outcome of every AcquireFederationLease Lambda invocation, in order: "acquired" or the error name."""
    events = cloud.history(execution_arn, REGION)
    by_id = {e["id"]: e for e in events}

    def function_of(event: dict[str, Any]) -> str:
        while event["type"] != "LambdaFunctionScheduled":
            event = by_id[event["previousEventId"]]
        return event["lambdaFunctionScheduledEventDetails"]["resource"].rsplit(":", 1)[1]

    outcomes = []
    for event in events:
        if event["type"] in ("LambdaFunctionSucceeded", "LambdaFunctionFailed") \
                and function_of(event).endswith("-AcquireFederationLeaseFunction"):
            failed = event.get("lambdaFunctionFailedEventDetails")
            outcomes.append(failed["error"] if failed else "acquired")
    return outcomes


def held_lease(execution_arn: str) -> dict[str, Any]:
    """The lease as AcquireFederationLease put it into the execution's state."""
    (exited,) = [e for e in cloud.history(execution_arn, REGION)
                 if e.get("stateExitedEventDetails", {}).get("name") == "AcquireFederationLease"]
    return json.loads(exited["stateExitedEventDetails"]["output"])["lease"]


def _rules_added_by_us() -> list[dict[str, Any]]:
    return boto3.client("ec2", region_name=REGION).describe_security_group_rules(
        Filters=[{"Name": "tag-key", "Values": ["slurm-multicluster:federation"]}])["SecurityGroupRules"]


def _wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return value


def test_a_lease_left_by_a_crashed_execution_expires_and_the_next_change_proceeds(moto_aws, members, retry_waits):
    now = int(time.time())
    _dynamodb().put_item(TableName=LEASE_TABLE, Item={  # what a pairing that died mid-way leaves behind
        "federation": {"S": FEDERATION}, "holder": {"S": "crashed-pairing-of-gamma"}, "workflow": {"S": "pairing"},
        "acquiredAt": {"N": str(now - 7300)}, "expiresAt": {"N": str(now - 100)},
    })

    arn = _start_pairing(moto_aws, members["beta"])
    sfn = boto3.client("stepfunctions", region_name=REGION)
    _wait_until(lambda: retry_waits.intervals or sfn.describe_execution(executionArn=arn)["status"] != "RUNNING",
                "the pairing ended or waits to retry")

    assert retry_waits.intervals == [], lease_attempts(arn)  # it did not wait for the dead holder
    result = sfn.describe_execution(executionArn=arn)
    assert lease_attempts(arn) == ["acquired"]  # at the first attempt: no FederationBusy, no retry
    execution_name = arn.rsplit(":", 1)[1]
    assert held_lease(arn)["holder"] == execution_name and held_lease(arn)["expiresAt"] > now
    states = cloud.state_names(arn, REGION)
    assert states.index("AcquireFederationLease") < states.index("ReadSlurmSettings")
    assert result["status"] == "FAILED" and result["error"] == "ReadSlurmSettingsFailed"  # no node answers SSM
    assert _live_lease() is None  # released on the failure path
    assert int(_lease_item()["fencingToken"]["N"]) == 1  # the crashed holder's item had no token: the first is 1


def test_a_live_lease_makes_the_pairing_wait_then_it_proceeds_when_the_holder_releases(moto_aws, members, retry_waits):
    lease.acquire(_dynamodb(), LEASE_TABLE, FEDERATION, "pairing-of-gamma", "pairing", 3600)

    arn = _start_pairing(moto_aws, members["beta"])
    _wait_until(lambda: "FederationBusy" in lease_attempts(arn), "the pairing met FederationBusy")
    _wait_until(lambda: retry_waits.intervals, "the pairing waits to retry")

    assert retry_waits.intervals[0] == LEASE_RETRY_SECONDS
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"  # waiting, not failed
    assert "ReadSlurmSettings" not in cloud.state_names(arn, REGION)
    assert moto_aws.commands == [] and _rules_added_by_us() == []  # nothing touched a node or a group
    assert _lease_item()["holder"]["S"] == "pairing-of-gamma"  # the waiting pairing took nothing over

    assert lease.release(_dynamodb(), LEASE_TABLE, FEDERATION, "pairing-of-gamma")  # as the holder does at its end
    retry_waits.let_go()
    result = cloud.wait_for_execution(arn, REGION, timeout=120)

    attempts = lease_attempts(arn)
    assert attempts[-1] == "acquired" and set(attempts[:-1]) == {"FederationBusy"}
    assert held_lease(arn)["holder"] == arn.rsplit(":", 1)[1]
    states = cloud.state_names(arn, REGION)
    assert states.index("AcquireFederationLease") < states.index("ReadSlurmSettings")
    assert result["status"] == "FAILED" and result["error"] == "ReadSlurmSettingsFailed"  # no node answers SSM
    assert _live_lease() is None
    assert held_lease(arn)["fencingToken"] == 2  # the next token after the holder it waited for


# ---------------------------------------------------------------- the fencing token: a holder that lost the lease


def _expire_lease() -> None:
    """The lease's holder outlived it (as an execution running longer than FederationLeaseSeconds would)."""
    _dynamodb().update_item(TableName=LEASE_TABLE, Key={"federation": {"S": FEDERATION}},
                            UpdateExpression="SET expiresAt = :past",
                            ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}})


def _pause_script_on(nodes, script: str, *node_names: str) -> tuple[threading.Event, threading.Event]:
    """The first run of ``script`` on each of ``node_names`` waits until the test lets it go; ``paused`` is set
    once all of them wait (an execution paused between the steps that only read)."""
    handler_name = "_" + script.removesuffix(".sh").replace("-", "_")
    run = getattr(nodes, handler_name)
    paused, go, waiting, lock = threading.Event(), threading.Event(), set(), threading.Lock()

    def pausing(node, args):
        with lock:
            first = node.name in node_names and node.name not in waiting
            waiting.update({node.name} if first else set())
            if waiting == set(node_names):
                paused.set()
        if first:
            go.wait(60)
        return run(node, args)

    setattr(nodes, handler_name, pausing)  # the simulator dispatches on the script's name (simulated_nodes.execute)
    return paused, go


def _scripts(nodes, since: int = 0) -> list[str]:
    return [script for _, _, script in nodes.calls[since:]]


def test_a_rotation_whose_lease_expired_changes_nothing_and_the_next_holders_rotation_stands(rotation_aws):  # noqa: F811
    aws = rotation_aws
    paused, go = _pause_script_on(aws.federation, "discover-slurm.sh", "alpha-head", "beta-head", "gamma-head")
    stale = aws.start()
    assert paused.wait(60), "the first rotation never read its members' settings"
    _expire_lease()

    fresh = aws.rotate()  # takes the expired lease over with the next fencing token, and rotates
    assert fresh["status"] == "SUCCEEDED", fresh.get("cause")
    keys, labels, calls = aws.node_keys(), aws.labels(), len(aws.federation.calls)
    go.set()
    result = cloud.wait_for_execution(stale, REGION, timeout=120)

    assert (result["status"], result["error"]) == ("FAILED", "LeaseLost")
    assert f"taken over: rotation {fresh['executionArn'].rsplit(':', 1)[1]} held it with fencing token 2" \
        in result["cause"]
    # after the reads it was paused in (they see the fresh key everywhere, so its prerequisites pass): no script
    assert _scripts(aws.federation, calls) == []
    assert aws.node_keys() == keys and set(keys.values()) == {json.loads(fresh["output"])["sha256"]}
    assert aws.labels() == labels  # no pending key created, none discarded, AWSCURRENT is the fresh rotation's
    order = states(result)
    assert "CreatePendingKey" in order and "RollBackToPreviousKey" not in order and "DiscardPendingKey" not in order
    assert order[-3:] == ["WasTheLeaseLost", "PublishRotationLeaseLost", "RotationFailed"]
    item = _lease_item()  # the fresh rotation released its lease; the stale one's release changed nothing
    assert (item["holder"]["S"], item["fencingToken"]["N"], item["expiresAt"]["N"]) == (
        fresh["executionArn"].rsplit(":", 1)[1], "2", "0")


def test_a_rotation_that_lost_its_lease_mid_switch_does_not_roll_back_over_the_new_holder(rotation_aws):  # noqa: F811
    aws = rotation_aws
    queue = cloud.events_queue(REGION)
    aws.federation.switch_gate = threading.Event()
    # the accounting member switches first (SwitchAccountingMember): its failure sends the rotation to the rollback
    aws.federation.fail[("alpha-head", "install-munge-key.sh")] = "slurmdbd did not come back after the key change"
    arn = aws.start()
    assert aws.federation.switch_started.wait(60), "the rotation never reached SwitchMembers"
    # The rotation outlives its lease and a pairing takes it over, in one write (no step may see it merely expired).
    after_expiry = int(aws.lease()["expiresAt"]["N"]) + 1
    newer = lease.acquire(_dynamodb(), LEASE_TABLE, FEDERATION, "pairing-of-delta", "pairing", 3600, now=after_expiry)
    labels = aws.labels()
    aws.federation.switch_gate.set()

    result = cloud.wait_for_execution(arn, REGION, timeout=120)

    assert (result["status"], result["error"]) == ("FAILED", "LeaseLost")
    assert "pairing pairing-of-delta holds it with fencing token 2" in result["cause"] and "NOT ROLLED BACK" in result["cause"]
    assert "restore-backup.sh" not in _scripts(aws.federation)  # no rollback raced the new holder
    assert aws.labels() == labels  # the pending key was not discarded either
    order = states(result)
    assert order.index("SwitchMembersFailed") < order.index("RollBackAccountingMember") < order.index("LeaseLost") \
        < order.index("ReportLeaseLost") < order.index("ReleaseFederationLease")
    assert "TestFederationOnPreviousKey" not in order and "DiscardPendingKey" not in order
    assert aws.lease()["holder"]["S"] == "pairing-of-delta"  # the new holder's lease is intact
    assert lease.holder_of(_dynamodb(), LEASE_TABLE, FEDERATION)["fencingToken"] == newer.fencing_token
    failed = [e["detail"] for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Munge Key Rotation Failed"]
    assert [(d["error"], d["outcome"]) for d in failed] == [("LeaseLost", "not rolled back: lease lost")]


def test_a_pairing_that_lost_its_lease_changes_nothing_and_leaves_the_new_holder_alone(pairing_aws):  # noqa: F811
    aws = pairing_aws
    queue = cloud.events_queue(REGION)
    beta_keys = {n.name: n.key_sha for n in aws.nodes.of("beta")}
    paused, go = _pause_script_on(aws.nodes, "discover-slurm.sh", "beta-head")
    arn = cloud.route_event(aws.deployment, cloud.stack_status_event(aws.clusters["beta"].stack_id, "CREATE_COMPLETE", REGION))
    assert paused.wait(60), "the pairing never read beta's settings"
    _expire_lease()
    lease.acquire(_dynamodb(), LEASE_TABLE, FEDERATION, "rotation-of-hpc", "rotation", 3600)
    go.set()

    result = cloud.wait_for_execution(arn, REGION, timeout=120)

    assert (result["status"], result["error"]) == ("FAILED", "LeaseLost")
    assert "rotation rotation-of-hpc holds it with fencing token 2" in result["cause"]
    assert set(_scripts(aws.nodes)) == {"discover-slurm.sh"}  # only the reads, before the lease was lost
    assert _rules_added_by_us() == []
    assert {n.name: n.key_sha for n in aws.nodes.of("beta")} == beta_keys
    order = cloud.state_names(arn, REGION)
    assert "AuthorizeIngress" in order and "SyncMungeKey" not in order and "RestoreNodeBackups" not in order
    assert _lease_item()["holder"]["S"] == "rotation-of-hpc" and _live_lease()["fencingToken"] == 2
    failed = [e["detail"] for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Cluster Pairing Failed"]
    assert [(d["error"], d["outcome"]) for d in failed] == [("LeaseLost", "not rolled back: lease lost")]


def test_an_unpairing_whose_lease_would_lapse_during_a_step_changes_nothing_under_it(moto_aws, federation, route):  # noqa: F811
    functions = boto3.client("lambda", region_name=REGION)
    acquire = moto_aws.deployment.functions["AcquireFederationLeaseFunction"]
    env = functions.get_function_configuration(FunctionName=acquire)["Environment"]["Variables"]
    # shorter than UpdateSecretAccess's 60 s step, the first under the lease (the template's MinValue forbids
    # this; the check must not rely on it)
    functions.update_function_configuration(FunctionName=acquire, Environment={
        "Variables": {**env, "FEDERATION_LEASE_SECONDS": "60"}})
    readers = _secret_readers()

    result = route(cloud.stack_status_event(federation["beta"].stack_id, "DELETE_IN_PROGRESS", REGION))[
        cloud.UNPAIRING_STATE_MACHINE]

    assert (result["status"], result["error"]) == ("FAILED", "LeaseLost")
    assert "before this step could end" in result["cause"]
    assert _secret_readers() == readers  # UpdateSecretAccess changed nothing (the sweep revokes it later)
    order = cloud.state_names(result["executionArn"], REGION)
    assert order[order.index("AcquireFederationLease"):] == [
        "AcquireFederationLease", "UpdateSecretAccess", "LeaseLost", "ReleaseFederationLease", "HowDidTheUnpairingEnd",
        "IsTheFailureALambdaError", "PublishUnpairingFailed",
        "UnpairingFailed"]
    assert _live_lease() is None  # still its own: released, not left to expire
