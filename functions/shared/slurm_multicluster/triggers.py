"""Turn what starts a workflow (a CloudFormation status event, a tag change or a manual request) into a PairingRequest.

Both the pairing and the unpairing state machines start with this normalization; each goes on only for its own
action ("pair" or "unpair") and ends at once for the other.
"""

from __future__ import annotations

from typing import Any, Callable

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slurm_multicluster import registry
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.models import PairingRequest

# CREATE_COMPLETE pairs a new cluster; UPDATE_COMPLETE re-applies what `pcluster update-cluster` regenerated
# (slurm_parallelcluster.conf): the pairing only changes what drifted, so an update without drift restarts nothing.
PAIRING_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
# DELETE_IN_PROGRESS unpairs while the cluster's security groups still exist: a rule of ours that references them
# would make CloudFormation's deletion of the group fail (DependencyViolation).
UNPAIRING_STATUSES = {"DELETE_IN_PROGRESS"}
# A tag removed through UpdateStack shows up as UPDATE_COMPLETE (an aws.tag event may never come): the unpairing
# looks at every update too, and unpairs only a stack that no longer asks to join but holds our rules.
OPT_OUT_STATUSES = {"UPDATE_COMPLETE"}


class StackStatusDetails(BaseModel):
    status: str
    status_reason: str | None = Field(default=None, alias="status-reason")


class StackStatusChange(BaseModel):
    stack_id: str = Field(alias="stack-id")
    status_details: StackStatusDetails = Field(alias="status-details")


class StackStatusChangeEvent(EventBridgeModel):
    """EventBridge "CloudFormation Stack Status Change" (source aws.cloudformation)."""

    detail: StackStatusChange


class TagChange(BaseModel):
    """The detail of an aws.tag "Tag Change on Resource" event: the resource's tags after the change."""

    changed_tag_keys: list[str] = Field(alias="changed-tag-keys")
    service: str
    resource_type: str = Field(alias="resource-type")
    tags: dict[str, str] = {}


class TagChangeEvent(EventBridgeModel):
    """EventBridge "Tag Change on Resource" (source aws.tag), for a CloudFormation stack."""

    detail: TagChange


class ParameterChange(BaseModel):
    operation: str
    name: str


class ParameterChangeEvent(EventBridgeModel):
    """EventBridge "Parameter Store Change" (source aws.ssm): a registry entry was created, updated or deleted."""

    detail: ParameterChange


# A registry change starts a workflow only for member entries: admitted -> pair the stack (if it asks, by its
# tag), revoked -> unpair it and rotate the rest. A federation's settings naming its accounting cluster pair that.
ADMITTING_OPERATIONS = {"Create", "Update"}
REVOKING_OPERATIONS = {"Delete"}


def _registry_change(event: dict[str, Any], execution_name: str, deployment_id: str,
                     read_parameter: Callable[[str], str | None] | None) -> PairingRequest:
    parsed = ParameterChangeEvent.model_validate(event)
    name, operation = parsed.detail.name, parsed.detail.operation
    ignore = {"action": "ignore", "stack_name": "none", "region": v.require(v.REGION, parsed.region, "region"),
              "trigger": "registry", "event_id": parsed.id, "execution_name": execution_name}
    prefix = f"/slurm-multicluster/{deployment_id}/federations/"
    if not name.startswith(prefix):
        return PairingRequest(reason="a parameter outside this deployment's registry", **ignore)
    member = registry.stack_arn_of_member_parameter(name, v.require(registry.ACCOUNT, parsed.account, "account"))
    if member is not None:
        federation, stack_arn = member
        stack_name, region = _stack_name_from_arn(stack_arn)
        action = "pair" if operation in ADMITTING_OPERATIONS else "unpair" if operation in REVOKING_OPERATIONS else "ignore"
        return PairingRequest(
            action=action, reason=f"registry entry {operation}: {name}", stack_name=stack_name, stack_id=stack_arn,
            region=v.require(v.REGION, region, "region"), federation=federation if action == "unpair" else None,
            trigger="revoked" if action == "unpair" else "admitted", event_id=parsed.id, execution_name=execution_name,
        )
    if name.endswith("/settings") and operation in ADMITTING_OPERATIONS and read_parameter is not None:
        value = read_parameter(name)
        try:
            declaration = registry.Declaration.model_validate_json(value or "")
        except ValidationError:
            return PairingRequest(reason=f"registry entry {name} is not a valid federation declaration", **ignore)
        stack_name, region = _stack_name_from_arn(declaration.accounting_stack_arn)
        return PairingRequest(
            action="pair", reason=f"federation declared: {name}", stack_name=stack_name,
            stack_id=declaration.accounting_stack_arn, region=v.require(v.REGION, region, "region"),
            trigger="declared", event_id=parsed.id, execution_name=execution_name,
        )
    return PairingRequest(reason=f"registry entry {operation} that starts nothing: {name}", **ignore)


class ManualRequest(BaseModel):
    """What an admin passes to `sam remote invoke` (events/manual-pair.json, events/manual-unpair.json)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    stack_name: str = Field(alias="stackName")
    stack_id: str | None = Field(default=None, alias="stackId")  # the identity, when the caller knows it
    region: str
    dry_run: bool = Field(default=False, alias="dryRun")
    remove_from_accounting: bool | None = Field(default=None, alias="removeFromAccounting")
    federation: str | None = None  # unpairing a cluster no longer tagged, whose rules are gone too
    revoked: bool = False  # unpairing a cluster the registry revoked (the sweep): run nothing on it, rotate the rest


def _stack_name_from_arn(arn: str) -> tuple[str, str]:
    match = v.STACK_ARN.fullmatch(arn)
    if not match:
        raise InvalidInput(f"invalid stack ARN: {arn!r}")
    return match["name"], match["region"]


def _tag_change(event: dict[str, Any], execution_name: str, tag_key: str, workflow: str) -> PairingRequest:
    """Opt in (the federation tag added or changed) or opt out (the tag removed) of a stack."""
    parsed = TagChangeEvent.model_validate(event)
    if not parsed.resources:
        raise InvalidInput("invalid tag change event: no resource")
    name, region = _stack_name_from_arn(parsed.resources[0])
    tagged = tag_key in parsed.detail.tags
    relevant = (parsed.detail.service, parsed.detail.resource_type) == ("cloudformation", "stack") and (
        tag_key in parsed.detail.changed_tag_keys)
    action = "ignore" if not relevant else "pair" if tagged else "unpair"
    if relevant and workflow == "unpairing":
        action = "unpair"  # a value changed to another federation (or to anything) leaves the one it was paired in
    return PairingRequest(
        action=action,
        reason=f"tag {tag_key} {'set' if tagged else 'removed'}" if relevant else "tag change not about the federation tag",
        stack_name=name,
        stack_id=parsed.resources[0],
        region=_event_region(parsed, region),
        trigger="tag-added" if tagged else "tag-removed",
        event_id=parsed.id,
        execution_name=execution_name,
    )


def normalize(event: dict[str, Any], execution_name: str, workflow: str = "pairing",
              tag_key: str = "slurm-multicluster:federation", deployment_id: str = "default",
              read_parameter: Callable[[str], str | None] | None = None,
              member_regions: list[str] | None = None) -> PairingRequest:
    """Validate the trigger strictly; hostile or malformed values raise InvalidInput before anything else runs.

    ``workflow`` ("pairing" or "unpairing") is the state machine asking: a manual request means its action.
    ``read_parameter`` reads a registry parameter (a federation's declaration names its accounting cluster).
    ``member_regions`` (Settings.member_regions): a request about a stack in any other region is refused.
    """
    request = _normalize(event, execution_name, workflow, tag_key, deployment_id, read_parameter)
    if member_regions is not None and request.action != "ignore" and request.region not in member_regions:
        raise InvalidInput(
            f"region {request.region} of stack {request.stack_name} is not one of this deployment's regions "
            f"({', '.join(member_regions)}): add it to FederationRegions and deploy region-forwarder.yaml there "
            "(README, Deploy); nothing was changed")
    return request


def _event_region(parsed: EventBridgeModel, stack_region: str) -> str:
    """The stack's region, which must be where the event was emitted (forwarded events keep their region)."""
    if parsed.region != stack_region:
        raise InvalidInput(f"invalid event: emitted in {parsed.region!r} about a stack in {stack_region!r}")
    return v.require(v.REGION, stack_region, "region")


def _normalize(event: dict[str, Any], execution_name: str, workflow: str, tag_key: str, deployment_id: str,
               read_parameter: Callable[[str], str | None] | None) -> PairingRequest:
    if workflow not in ("pairing", "unpairing"):
        raise InvalidInput(f"invalid workflow {workflow!r}: must be pairing or unpairing")
    try:
        if event.get("detail-type") == "Parameter Store Change":
            return _registry_change(event, execution_name, deployment_id, read_parameter)
        if event.get("detail-type") == "Tag Change on Resource":
            return _tag_change(event, execution_name, tag_key, workflow)
        if "detail-type" in event:
            parsed = StackStatusChangeEvent.model_validate(event)
            name, region = _stack_name_from_arn(parsed.detail.stack_id)
            status = parsed.detail.status_details.status
            action = "pair" if status in PAIRING_STATUSES else "unpair" if status in UNPAIRING_STATUSES else "ignore"
            if workflow == "unpairing" and status in OPT_OUT_STATUSES:
                action = "unpair"  # DiscoverDeparture decides: still tagged -> nothing; tag gone, rules ours -> opt-out
            return PairingRequest(
                action=action,
                reason=f"stack status {status}",
                stack_name=name,
                stack_id=parsed.detail.stack_id,
                region=_event_region(parsed, region),
                trigger=status,
                event_id=parsed.id,
                execution_name=execution_name,
            )
        manual = ManualRequest.model_validate(event)
        unpair = workflow == "unpairing"
        if manual.remove_from_accounting is not None and not unpair:
            raise InvalidInput("invalid pairing request: removeFromAccounting is an unpairing option")
        if manual.dry_run and unpair:
            raise InvalidInput("invalid unpairing request: dryRun is a pairing option")
        if manual.federation is not None and not unpair:
            raise InvalidInput("invalid pairing request: federation is an unpairing option (pairing reads the stack tag)")
        if manual.revoked and not unpair:
            raise InvalidInput("invalid pairing request: revoked is an unpairing option")
        if manual.stack_id is not None:
            name, region = _stack_name_from_arn(manual.stack_id)
            if (name, region) != (manual.stack_name, manual.region):
                raise InvalidInput("invalid request: stackId names another stack or region than stackName and region")
        return PairingRequest(
            action="unpair" if unpair else "pair",
            reason="manual request",
            stack_name=manual.stack_name,
            stack_id=manual.stack_id,
            region=manual.region,
            dry_run=manual.dry_run,
            remove_from_accounting=manual.remove_from_accounting,
            federation=manual.federation,
            trigger="revoked" if manual.revoked else "manual",
            execution_name=execution_name,
        )
    except ValidationError as error:
        # Only the field locations and messages: never echo the whole (possibly hostile) input back.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InvalidInput(f"invalid pairing request: {problems}") from None
