"""The federation lease: one workflow at a time per federation, released by its holder, freed by expiry; its
fencing token grows with every new holder, and a step of a holder that lost the lease changes nothing."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from lab.cloud import LambdaContext
from slurm_multicluster import lease
from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.models import StateModel

TABLE = "leases"


@pytest.fixture
def dynamodb(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "federation", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "federation", "KeyType": "HASH"}])
        yield client


def test_a_free_federation_is_leased_until_the_expiry(dynamodb):
    held = lease.acquire(dynamodb, TABLE, "hpc", "exec-1", "rotation", 600, now=1000)
    assert (held.holder, held.workflow, held.expires_at) == ("exec-1", "rotation", 1600)
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=1599) == {"holder": "exec-1", "workflow": "rotation",
                                                                 "fencingToken": 1, "expiresAt": 1600}


def test_another_workflow_is_refused_while_the_lease_is_held(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "pair-1", "pairing", 600, now=1000)
    with pytest.raises(lease.FederationBusy, match="pairing pair-1 holds its lease.*rotation rot-1 refused"):
        lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1001)
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=1001)["holder"] == "pair-1"


def test_other_federations_are_independent(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    assert lease.acquire(dynamodb, TABLE, "bio", "rot-2", "rotation", 600, now=1000).holder == "rot-2"


def test_the_holder_acquiring_again_extends_its_own_lease_and_keeps_its_token(dynamodb):
    first = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    again = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1300)
    assert (again.expires_at, again.fencing_token) == (1900, first.fencing_token)


def test_another_workflow_with_the_same_execution_name_does_not_share_the_lease(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "same-name", "pairing", 600, now=1000)
    with pytest.raises(lease.FederationBusy):
        lease.acquire(dynamodb, TABLE, "hpc", "same-name", "unpairing", 600, now=1001)


def test_every_new_holder_gets_a_larger_fencing_token_released_or_expired(dynamodb):
    tokens = [lease.acquire(dynamodb, TABLE, "hpc", "pair-1", "pairing", 600, now=1000).fencing_token]
    lease.release(dynamodb, TABLE, "hpc", "pair-1", tokens[0], now=1100)
    tokens.append(lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1200).fencing_token)
    tokens.append(lease.acquire(dynamodb, TABLE, "hpc", "pair-2", "pairing", 600, now=1801).fencing_token)  # expired
    tokens.append(lease.acquire(dynamodb, TABLE, "hpc", "pair-2", "pairing", 600, now=2402).fencing_token)  # own, expired
    assert tokens == [1, 2, 3, 4]
    assert lease.acquire(dynamodb, TABLE, "bio", "rot-2", "rotation", 600, now=1000).fencing_token == 1


def test_an_expired_lease_is_taken_over(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "crashed", "pairing", 600, now=1000)
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=1601) is None
    assert lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1601).holder == "rot-1"


def test_release_frees_the_federation_only_for_its_holder(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    assert lease.release(dynamodb, TABLE, "hpc", "someone-else") is False
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=1001)["holder"] == "rot-1"
    assert lease.release(dynamodb, TABLE, "hpc", "rot-1") is True
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=1001) is None
    assert lease.release(dynamodb, TABLE, "hpc", "rot-1") is False  # a second release is harmless


def test_a_late_release_does_not_free_a_lease_taken_over_after_expiry(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "slow", "rotation", 600, now=1000)
    lease.acquire(dynamodb, TABLE, "hpc", "next", "pairing", 600, now=2000)
    assert lease.release(dynamodb, TABLE, "hpc", "slow") is False
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=2001)["holder"] == "next"


def test_a_release_with_an_old_token_does_not_free_the_same_holders_newer_lease(dynamodb):
    old = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    new = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=2000)  # after its own expiry
    assert lease.release(dynamodb, TABLE, "hpc", "rot-1", old.fencing_token) is False
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=2001)["fencingToken"] == new.fencing_token
    assert lease.release(dynamodb, TABLE, "hpc", "rot-1", new.fencing_token) is True


def test_the_live_holder_may_change_the_federation(dynamodb):
    held = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    lease.ensure_held(dynamodb, TABLE, held, for_seconds=300, now=1100)  # no LeaseLost


def test_a_holder_whose_lease_was_taken_over_after_expiry_may_change_nothing(dynamodb):
    slow = lease.acquire(dynamodb, TABLE, "hpc", "slow", "rotation", 600, now=1000)
    lease.acquire(dynamodb, TABLE, "hpc", "next", "pairing", 600, now=1601)
    with pytest.raises(lease.LeaseLost, match="rotation slow .fencing token 1. no longer holds.*taken over: "
                                              "pairing next holds it with fencing token 2"):
        lease.ensure_held(dynamodb, TABLE, slow, now=1602)


def test_a_holder_whose_lease_expired_may_change_nothing_even_if_nobody_took_it(dynamodb):
    held = lease.acquire(dynamodb, TABLE, "hpc", "slow", "rotation", 600, now=1000)
    with pytest.raises(lease.LeaseLost, match="expired at 1970-01-01T00:26:40Z"):
        lease.ensure_held(dynamodb, TABLE, held, now=1601)


def test_a_step_that_could_outlast_the_lease_may_change_nothing(dynamodb):
    held = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    with pytest.raises(lease.LeaseLost, match="before this step could end .900 s."):
        lease.ensure_held(dynamodb, TABLE, held, for_seconds=900, now=1000)


def test_a_released_lease_or_an_older_token_of_the_same_holder_may_change_nothing(dynamodb):
    old = lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    lease.release(dynamodb, TABLE, "hpc", "rot-1", old.fencing_token, now=1100)
    with pytest.raises(lease.LeaseLost, match="already released"):
        lease.ensure_held(dynamodb, TABLE, old, now=1101)
    lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1200)
    with pytest.raises(lease.LeaseLost, match="taken over: rotation rot-1 holds it with fencing token 2"):
        lease.ensure_held(dynamodb, TABLE, old, now=1201)


class Change(StateModel):
    """What the example step changes: one item of the table, as a node or cloud change stands for."""

    item: str


def _change(change: Change) -> dict:
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=TABLE, Item={"federation": {"S": change.item}, "expiresAt": {"N": "1"}})
    return {"changed": change.item}


@leased_step(Change)
def _changing_step(change: Change, context) -> dict:
    return _change(change)


@leased_step(Change, runs_before_lease=True)
def _step_run_before_the_lease(change: Change, context) -> dict:
    return _change(change)


def _changed(dynamodb, item: str) -> bool:
    return "Item" in dynamodb.get_item(TableName=TABLE, Key={"federation": {"S": item}}, ConsistentRead=True)


@pytest.fixture
def step_env(dynamodb, monkeypatch):
    monkeypatch.setenv("FEDERATION_LEASE_TABLE", TABLE)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    from slurm_multicluster import aws
    aws.client.cache_clear()
    yield dynamodb
    aws.client.cache_clear()


def _context() -> LambdaContext:
    return LambdaContext("step", "arn:aws:lambda:us-east-1:123456789012:function:step")


def test_a_leased_step_runs_for_the_live_holder(step_env):
    held = lease.acquire(step_env, TABLE, "hpc", "rot-1", "rotation", 3600)
    assert _changing_step({"item": "change-1", "lease": held.state()}, _context()) == {"changed": "change-1"}
    assert _changed(step_env, "change-1")


def test_a_leased_step_of_a_holder_that_lost_the_lease_changes_nothing(step_env):
    stale = lease.acquire(step_env, TABLE, "hpc", "slow", "rotation", 3600, now=1000)  # long expired
    lease.acquire(step_env, TABLE, "hpc", "next", "pairing", 3600)
    with pytest.raises(lease.LeaseLost):
        _changing_step({"item": "change-1", "lease": stale.state()}, _context())
    assert not _changed(step_env, "change-1")


@pytest.mark.parametrize("event", [{"item": "change-1"}, {"item": "change-1", "lease": None}])
def test_a_leased_step_without_the_lease_changes_nothing(step_env, event):
    with pytest.raises(InvalidInput, match="must carry the execution's lease"):
        _changing_step(event, _context())
    assert not _changed(step_env, "change-1")


def test_a_step_the_workflow_runs_before_the_lease_accepts_an_explicit_null_only(step_env):
    assert _step_run_before_the_lease({"item": "change-1", "lease": None}, _context()) == {"changed": "change-1"}
    with pytest.raises(InvalidInput):
        _step_run_before_the_lease({"item": "change-2"}, _context())
    assert not _changed(step_env, "change-2")


@pytest.mark.parametrize("federation, holder, workflow", [
    ("hpc;x", "rot-1", "rotation"), ("hpc", "$(id)", "rotation"), ("hpc", "rot-1", "reboot"), ("", "rot-1", "rotation"),
])
def test_invalid_lease_requests_are_refused(dynamodb, federation, holder, workflow):
    with pytest.raises(InvalidInput):
        lease.acquire(dynamodb, TABLE, federation, holder, workflow, 600)
