"""Turn what starts a pairing (a CloudFormation status event or a manual request) into a PairingRequest."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.models import PairingRequest

# CREATE_COMPLETE pairs a new cluster; UPDATE_COMPLETE re-applies what `pcluster update-cluster` regenerated
# (slurm_parallelcluster.conf): the pairing only changes what drifted, so an update without drift restarts nothing.
PAIRING_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}


class StackStatusDetails(BaseModel):
    status: str
    status_reason: str | None = Field(default=None, alias="status-reason")


class StackStatusChange(BaseModel):
    stack_id: str = Field(alias="stack-id")
    status_details: StackStatusDetails = Field(alias="status-details")


class StackStatusChangeEvent(EventBridgeModel):
    """EventBridge "CloudFormation Stack Status Change" (source aws.cloudformation)."""

    detail: StackStatusChange


class ManualRequest(BaseModel):
    """What an admin passes to `sam remote invoke` (events/manual-pair.json)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    stack_name: str = Field(alias="stackName")
    region: str
    dry_run: bool = Field(default=False, alias="dryRun")


def _stack_name_from_arn(arn: str) -> tuple[str, str]:
    match = v.STACK_ARN.fullmatch(arn)
    if not match:
        raise InvalidInput(f"invalid stack ARN: {arn!r}")
    return match["name"], match["region"]


def normalize(event: dict[str, Any], execution_name: str) -> PairingRequest:
    """Validate the trigger strictly; hostile or malformed values raise InvalidInput before anything else runs."""
    try:
        if "detail-type" in event:
            parsed = StackStatusChangeEvent.model_validate(event)
            name, region = _stack_name_from_arn(parsed.detail.stack_id)
            status = parsed.detail.status_details.status
            pair = status in PAIRING_STATUSES
            return PairingRequest(
                action="pair" if pair else "ignore",
                reason=f"stack status {status}",
                stack_name=name,
                stack_id=parsed.detail.stack_id,
                region=v.require(v.REGION, region, "region"),
                trigger=status,
                event_id=parsed.id,
                execution_name=execution_name,
            )
        manual = ManualRequest.model_validate(event)
        return PairingRequest(
            action="pair",
            reason="manual request",
            stack_name=manual.stack_name,
            region=manual.region,
            dry_run=manual.dry_run,
            trigger="manual",
            execution_name=execution_name,
        )
    except ValidationError as error:
        # Only the field locations and messages: never echo the whole (possibly hostile) input back.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InvalidInput(f"invalid pairing request: {problems}") from None
