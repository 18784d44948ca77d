"""One workflow at a time per federation: a lease item in DynamoDB, with an expiry and a fencing token.

Every workflow that changes a federation (pairing, key rotation, unpairing; the drift sweep through its
pairings) acquires the federation's lease first and releases it on its success and failure paths. A lease whose
holder died without releasing it (an execution that timed out or was stopped) expires by itself after ``seconds``.

Each acquisition by a new holder increments the federation's fencing token, in the same conditional write that
takes the lease. The holder carries ``{holder, fencingToken}`` in its execution state, and every step that
changes nodes or the cloud first checks (``ensure_held``, through ``lambda_step.leased_step``) that the item
still names this holder and token and will not expire before the step can end; otherwise it raises LeaseLost
and changes nothing. So a holder whose lease expired, or was taken over, can never undo or overwrite the work
of the new holder, whose token is larger.

Item: ``{"federation": <name>, "holder": <execution name>, "workflow": "rotation", "fencingToken": n,
"acquiredAt": epoch, "expiresAt": epoch, "releasedAt": epoch}``. Items are never deleted (a release sets
``expiresAt`` to 0), so the token only ever grows; the table has no TTL for that reason.
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


class LeaseLost(PairingError):
    """This execution no longer holds the federation's lease (expired, or taken over with a newer fencing
    token): the step changed nothing, and nothing of this execution may change the federation any more."""


class LeaseRequest(StateModel):
    """What the acquire and release steps receive: whose lease, for which execution of which workflow
    (release: with the fencing token it was acquired with, so it never frees a newer holder's lease)."""

    federation: str
    holder: str
    workflow: str = "rotation"
    fencing_token: int | None = None


class Lease(StateModel):
    """A held lease, as the acquiring step returns it into the workflow state."""

    federation: str
    holder: str
    workflow: str
    fencing_token: int
    acquired_at: int
    expires_at: int


def _check(federation: str, holder: str, workflow: str) -> None:
    v.require(v.FEDERATION_NAME, federation, "federation name")
    v.require(v.BACKUP_ID, holder, "lease holder (execution name)")
    if workflow not in WORKFLOWS:
        raise InvalidInput(f"invalid workflow {workflow!r}: must be one of {', '.join(WORKFLOWS)}")


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _conditional_update(dynamodb: Any, **update: Any) -> dict[str, Any] | None:
    """The item after a conditional UpdateItem, or None when its condition did not hold."""
    try:
        return dynamodb.update_item(ReturnValues="ALL_NEW", **update)["Attributes"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        return None


def acquire(dynamodb: Any, table: str, federation: str, holder: str, workflow: str, seconds: int,
            now: float | None = None) -> Lease:
    """Take the federation's lease for ``seconds`` with the next fencing token, or raise FederationBusy naming
    who holds it.

    Re-entrant: the holder acquiring again while it holds the lease (a retried step) extends it and keeps its
    token.
    """
    _check(federation, holder, workflow)
    now_s = int(now if now is not None else time.time())
    key = {"federation": {"S": federation}}
    taken = _conditional_update(  # free, released or expired: a new holder, hence a new token
        dynamodb, TableName=table, Key=key,
        UpdateExpression="SET holder = :holder, workflow = :workflow, acquiredAt = :now, expiresAt = :expires, "
                         "fencingToken = if_not_exists(fencingToken, :zero) + :one REMOVE releasedAt",
        ConditionExpression="attribute_not_exists(federation) OR expiresAt < :now",
        ExpressionAttributeValues={":holder": {"S": holder}, ":workflow": {"S": workflow}, ":now": {"N": str(now_s)},
                                   ":expires": {"N": str(now_s + seconds)}, ":zero": {"N": "0"}, ":one": {"N": "1"}},
    ) or _conditional_update(  # already ours and live: extend, same token
        dynamodb, TableName=table, Key=key,
        UpdateExpression="SET expiresAt = :expires",
        ConditionExpression="holder = :holder AND workflow = :workflow AND expiresAt >= :now",
        ExpressionAttributeValues={":holder": {"S": holder}, ":workflow": {"S": workflow}, ":now": {"N": str(now_s)},
                                   ":expires": {"N": str(now_s + seconds)}},
    )
    if taken is None:
        current = holder_of(dynamodb, table, federation, now_s)
        if current is None:  # released between our write and our read: a plain retry will get it
            raise FederationBusy(f"federation {federation}: the lease changed hands while acquiring it, try again")
        raise FederationBusy(
            f"federation {federation} is busy: {current['workflow']} {current['holder']} holds its lease until "
            f"{_when(current['expiresAt'])}; {workflow} {holder} refused to start and changed nothing"
        )
    lease = Lease(federation=federation, holder=holder, workflow=workflow,
                  fencing_token=int(taken["fencingToken"]["N"]), acquired_at=int(taken["acquiredAt"]["N"]),
                  expires_at=int(taken["expiresAt"]["N"]))
    logger.info("acquired federation lease", extra={"lease": lease.state()})
    return lease


def ensure_held(dynamodb: Any, table: str, lease: Lease, for_seconds: float = 0, now: float | None = None) -> None:
    """Raise LeaseLost unless ``lease`` is still the federation's live lease (same holder, same fencing token,
    read consistently) and stays so for ``for_seconds`` more (the step's own remaining time)."""
    _check(lease.federation, lease.holder, lease.workflow)
    now_s = now if now is not None else time.time()
    item = dynamodb.get_item(TableName=table, Key={"federation": {"S": lease.federation}},
                             ConsistentRead=True).get("Item")
    mine = f"{lease.workflow} {lease.holder} (fencing token {lease.fencing_token})"
    if not item or item.get("holder", {}).get("S") != lease.holder \
            or int(item.get("fencingToken", {"N": "0"})["N"]) != lease.fencing_token:
        if not item or "holder" not in item:
            reason = "its lease item is gone"
        else:
            live = int(item["expiresAt"]["N"]) >= now_s
            reason = (f"its lease was taken over: {item['workflow']['S']} {item['holder']['S']} "
                      f"{'holds' if live else 'held'} it with fencing token {int(item.get('fencingToken', {'N': '0'})['N'])}"
                      f"{'' if live else ' (and gave it back since)'}")
    elif int(item["expiresAt"]["N"]) == 0:
        reason = "its lease was already released"
    elif (expires_at := int(item["expiresAt"]["N"])) < now_s:
        reason = f"its lease expired at {_when(expires_at)}"
    elif expires_at < now_s + for_seconds:
        reason = f"its lease ends at {_when(expires_at)}, before this step could end ({for_seconds:.0f} s)"
    else:
        return
    raise LeaseLost(f"federation {lease.federation}: {mine} no longer holds the federation lease, {reason}; "
                    "this step changed nothing and this execution must not change the federation any more")


def release(dynamodb: Any, table: str, federation: str, holder: str, fencing_token: int | None = None,
            now: float | None = None) -> bool:
    """Give the lease back if ``holder`` (with ``fencing_token``, when given) still holds it; True when this
    call released it. The item stays, with its token, so the next holder's token is larger.

    Releasing a lease that expired and was taken by another workflow leaves that workflow's lease alone.
    """
    v.require(v.FEDERATION_NAME, federation, "federation name")
    v.require(v.BACKUP_ID, holder, "lease holder (execution name)")
    condition, values = "holder = :holder AND expiresAt > :zero", {":holder": {"S": holder}, ":zero": {"N": "0"}}
    if fencing_token is not None:
        condition += " AND fencingToken = :token"
        values[":token"] = {"N": str(fencing_token)}
    released = _conditional_update(
        dynamodb, TableName=table, Key={"federation": {"S": federation}},
        UpdateExpression="SET expiresAt = :zero, releasedAt = :now",
        ConditionExpression=condition,
        ExpressionAttributeValues={**values, ":now": {"N": str(int(now if now is not None else time.time()))}},
    )
    if released is None:
        logger.warning("lease not held by this execution (expired, taken over, released or never acquired)",
                       extra={"federation": federation, "holder": holder, "fencing_token": fencing_token})
        return False
    logger.info("released federation lease", extra={"federation": federation, "holder": holder,
                                                    "fencing_token": fencing_token})
    return True


def holder_of(dynamodb: Any, table: str, federation: str, now: float | None = None) -> dict[str, Any] | None:
    """The live lease of a federation (holder, workflow, fencingToken, expiresAt), or None when nobody holds one."""
    item = dynamodb.get_item(TableName=table, Key={"federation": {"S": federation}}, ConsistentRead=True).get("Item")
    if not item or int(item["expiresAt"]["N"]) < int(now if now is not None else time.time()):
        return None
    return {"holder": item["holder"]["S"], "workflow": item["workflow"]["S"],
            "fencingToken": int(item.get("fencingToken", {"N": "0"})["N"]), "expiresAt": int(item["expiresAt"]["N"])}
