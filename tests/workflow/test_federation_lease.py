"""One change at a time per federation, as the pairing state machine holds it: the real pairing ASL in moto, the
real handlers in-process, the real lease table. SSM reaches no node here, so every pairing ends at
ReadSlurmSettings, the first step after the lease; that is enough to see who got the lease, when, and that it
was given back. (A rotation refused while a pairing holds the lease: tests/workflow/test_rotation_protocol.py.)"""

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
    assert _lease_item() is None  # released on the failure path; the crashed holder's item is gone too


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
    assert _lease_item() is None
