"""The federation lease: one workflow at a time per federation, released by its holder, freed by expiry."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import lease
from slurm_multicluster.errors import InvalidInput

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
                                                                 "expiresAt": 1600}


def test_another_workflow_is_refused_while_the_lease_is_held(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "pair-1", "pairing", 600, now=1000)
    with pytest.raises(lease.FederationBusy, match="pairing pair-1 holds its lease.*rotation rot-1 refused"):
        lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1001)
    assert lease.holder_of(dynamodb, TABLE, "hpc", now=1001)["holder"] == "pair-1"


def test_other_federations_are_independent(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    assert lease.acquire(dynamodb, TABLE, "bio", "rot-2", "rotation", 600, now=1000).holder == "rot-2"


def test_the_holder_acquiring_again_extends_its_own_lease(dynamodb):
    lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1000)
    assert lease.acquire(dynamodb, TABLE, "hpc", "rot-1", "rotation", 600, now=1300).expires_at == 1900


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


@pytest.mark.parametrize("federation, holder, workflow", [
    ("hpc;x", "rot-1", "rotation"), ("hpc", "$(id)", "rotation"), ("hpc", "rot-1", "reboot"), ("", "rot-1", "rotation"),
])
def test_invalid_lease_requests_are_refused(dynamodb, federation, holder, workflow):
    with pytest.raises(InvalidInput):
        lease.acquire(dynamodb, TABLE, federation, holder, workflow, 600)
