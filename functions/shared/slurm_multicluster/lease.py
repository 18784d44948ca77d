"""One workflow at a time per federation: a lease item in DynamoDB, with an expiry.

Every workflow that changes a federation (pairing, key rotation, unpairing; the drift sweep through its
pairings) acquires the federation's lease first and releases it on its success and failure paths. A lease whose
holder died without releasing it (an execution that timed out or was stopped) expires by itself after ``seconds``.

Item: ``{"federation": <name>, "holder": <execution name>, "workflow": "rotation", "acquiredAt": epoch,
"expiresAt": epoch}``; ``expiresAt`` is also the table's TTL attribute (DynamoDB deletes expired items lazily,
so the condition below, not the TTL, decides).
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, PairingError
from slurm_multicluster.models import StateModel

logger = Logger(child=True)

WORKFLOWS = ("pairing", "rotation", "unpairing")  # the drift sweep's runs are pairings


class FederationBusy(PairingError):
    """Another workflow holds the federation's lease: this one refuses to start (nothing was changed)."""


class LeaseRequest(StateModel):
    """What the acquire and release steps receive: whose lease, for which execution of which workflow."""

    federation: str
    holder: str
    workflow: str = "rotation"


class Lease(StateModel):
    """A held lease, as the acquiring step returns it into the workflow state."""

    federation: str
    holder: str
    workflow: str
    acquired_at: int
    expires_at: int


def _check(federation: str, holder: str, workflow: str) -> None:
    v.require(v.FEDERATION_NAME, federation, "federation name")
    v.require(v.BACKUP_ID, holder, "lease holder (execution name)")
    if workflow not in WORKFLOWS:
        raise InvalidInput(f"invalid workflow {workflow!r}: must be one of {', '.join(WORKFLOWS)}")


def acquire(dynamodb: Any, table: str, federation: str, holder: str, workflow: str, seconds: int,
            now: float | None = None) -> Lease:
    """Take the federation's lease for ``seconds``, or raise FederationBusy naming who holds it.

    Re-entrant: the holder acquiring again (a retried step) just extends its own lease.
    """
    _check(federation, holder, workflow)
    now_s = int(now if now is not None else time.time())
    lease = Lease(federation=federation, holder=holder, workflow=workflow, acquired_at=now_s, expires_at=now_s + seconds)
    try:
        dynamodb.put_item(
            TableName=table,
            Item={
                "federation": {"S": federation},
                "holder": {"S": holder},
                "workflow": {"S": workflow},
                "acquiredAt": {"N": str(lease.acquired_at)},
                "expiresAt": {"N": str(lease.expires_at)},
            },
            ConditionExpression="attribute_not_exists(federation) OR expiresAt < :now OR holder = :holder",
            ExpressionAttributeValues={":now": {"N": str(now_s)}, ":holder": {"S": holder}},
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        current = holder_of(dynamodb, table, federation, now_s)
        if current is None:  # released between our write and our read: a plain retry will get it
            raise FederationBusy(f"federation {federation}: the lease changed hands while acquiring it, try again") from None
        raise FederationBusy(
            f"federation {federation} is busy: {current['workflow']} {current['holder']} holds its lease until "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(current['expiresAt']))}; "
            f"{workflow} {holder} refused to start and changed nothing"
        ) from None
    logger.info("acquired federation lease", extra={"lease": lease.state()})
    return lease


def release(dynamodb: Any, table: str, federation: str, holder: str) -> bool:
    """Give the lease back if ``holder`` still holds it; True when this call released it.

    Releasing a lease that expired and was taken by another workflow leaves that workflow's lease alone.
    """
    v.require(v.FEDERATION_NAME, federation, "federation name")
    v.require(v.BACKUP_ID, holder, "lease holder (execution name)")
    try:
        dynamodb.delete_item(
            TableName=table,
            Key={"federation": {"S": federation}},
            ConditionExpression="holder = :holder",
            ExpressionAttributeValues={":holder": {"S": holder}},
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        logger.warning("lease not held by this execution (expired, taken over or never acquired)",
                       extra={"federation": federation, "holder": holder})
        return False
    logger.info("released federation lease", extra={"federation": federation, "holder": holder})
    return True


def holder_of(dynamodb: Any, table: str, federation: str, now: float | None = None) -> dict[str, Any] | None:
    """The live lease of a federation (holder, workflow, expiresAt), or None when nobody holds one."""
    item = dynamodb.get_item(TableName=table, Key={"federation": {"S": federation}}, ConsistentRead=True).get("Item")
    if not item or int(item["expiresAt"]["N"]) < int(now if now is not None else time.time()):
        return None
    return {"holder": item["holder"]["S"], "workflow": item["workflow"]["S"], "expiresAt": int(item["expiresAt"]["N"])}
