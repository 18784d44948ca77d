"""The drift sweep: every tagged cluster checked (and repaired) by the pairing workflow, one report; and the
backstop in the other direction: every cluster that still holds this deployment's rules or secret read access but
is no longer an admitted, tagged member is reported (dryRun) or unpaired.

The pairing state machine already knows what drift is: its plan lists exactly what differs from a paired
cluster (missing ingress rules, another munge key, accounting lines, its own slurmdbd still running), a dryRun
returns that plan, and a real run repairs only that, verifies, and rolls back on failure. The sweep therefore
starts one pairing execution per tagged cluster (manual request format), one at a time, polls it, and turns
the plans it returns into a report. A departed cluster (revoked in the registry, its tag removed, its stack
deleted: an event missed, or an unpairing that failed) gets an unpairing execution the same way, before the
pairings; a secret reader no member's head node role accounts for is revoked. The Lambdas here are thin
adapters over these functions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from slurm_multicluster import announcements, discovery, ingress, munge_secret, registry
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, concise
from slurm_multicluster.models import ClusterName, ExecutionName, FederationName, Region, StateModel
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

ClientFactory = Callable[[str, str], Any]

REPORT_DETAIL_TYPE = "Slurm Federation Drift Report"
MEMBERS_METRIC = "FederationMembers"  # per federation (dimension federation): the members each sweep checked
FIRST_POLL_SECONDS = 2
LONGEST_POLL_SECONDS = 30  # a pairing that repairs takes minutes on AWS: poll less often as it goes on


# ---------------------------------------------------------------- state


class SweepRequest(StateModel):
    """A validated sweep request."""

    dry_run: bool
    federation: FederationName | None = None
    trigger: Literal["manual", "schedule"]
    execution_name: ExecutionName


class SweepState(StateModel):
    request: SweepRequest


class TaggedCluster(StateModel):
    """One cluster the sweep checks (tagged and admitted: the pairing workflow), or unpairs (departed: the
    unpairing workflow, ``reason`` says why it is no member any more)."""

    cluster: ClusterName
    stack_id: str | None = None
    federation: FederationName
    region: Region
    is_accounting: bool = False
    workflow: Literal["pairing", "unpairing"] = "pairing"
    reason: str | None = None
    revoked: bool = False  # the registry revoked it: the unpairing runs nothing on it and rotates the others


class DepartedReaders(StateModel):
    """Roles the federation secret still lets read the munge key that no admitted, tagged member's head node has."""

    federation: str
    secret_arn: str
    region: str
    roles: list[str]
    revoked: bool = False


class UncheckedStack(StateModel):
    """A tagged stack the sweep did not check: its federation tag value is invalid (a failed line of the report),
    or the registry does not admit it (listed as not admitted, for an administrator to decide)."""

    cluster: str
    region: str
    error: str
    not_admitted: bool = False


class SweepClusters(StateModel):
    clusters: list[TaggedCluster]  # departed clusters first (without dryRun), then the members to check
    unchecked: list[UncheckedStack] = []
    departed: list[TaggedCluster] = []  # every departed cluster found, unpaired or not (dryRun)
    departed_readers: list[DepartedReaders] = []


class PairingRun(StateModel):
    """One Map item: a cluster and the pairing execution that checks it."""

    request: SweepRequest
    cluster: TaggedCluster
    execution_arn: str | None = None
    poll_seconds: int = FIRST_POLL_SECONDS


class ClusterResult(StateModel):
    """How one cluster's pairing run ended (status RUNNING while the Map keeps polling)."""

    cluster: str
    federation: str
    region: str = ""
    status: str
    workflow: Literal["pairing", "unpairing"] = "pairing"
    execution_arn: str | None = None
    plan: dict[str, Any] | None = None
    error: str | None = None
    cause: str | None = None


class ReportInput(StateModel):
    request: SweepRequest
    unchecked: list[UncheckedStack] = []
    departed: list[TaggedCluster] = []
    departed_readers: list[DepartedReaders] = []
    results: list[ClusterResult] = []


class DriftedCluster(StateModel):
    cluster: str
    federation: str
    drift: list[str]


class FailedCluster(StateModel):
    cluster: str
    federation: str | None = None
    error: str


class DepartedLine(StateModel):
    cluster: str
    stack_id: str
    federation: str
    reason: str


class SweepReport(StateModel):
    """What the sweep found (and, without dryRun, repaired): the output and the report event's detail."""

    dry_run: bool
    federation: str | None = None
    checked: list[str]
    in_sync: list[str]
    drifted: list[DriftedCluster]
    repaired: list[DriftedCluster]
    failed: list[FailedCluster]
    not_admitted: list[str] = []  # tagged stacks (StackIds) that no registry entry admits: nothing was done to them
    departed: list[DepartedLine] = []  # hold our rules but are no admitted, tagged member (unpaired without dryRun)
    unpaired: list[str] = []  # StackIds the sweep's unpairing runs unpaired
    departed_readers: list[DepartedReaders] = []  # revoked (revoked: true) without dryRun
    # federation -> its members the sweep checked (in sync or drifted; failed checks are in ``failed``)
    members: dict[str, int] = {}


# ---------------------------------------------------------------- the request


class _SweepInput(BaseModel):
    """What the schedule (`{"trigger": "schedule", "dryRun": ...}`) and events/manual-sweep.json pass."""

    model_config = ConfigDict(extra="forbid")
    dryRun: StrictBool = False  # noqa: N815 (the input's own field name)
    federation: str | None = None
    trigger: Literal["manual", "schedule"] = "manual"


def normalize(event: Any, execution_name: str) -> SweepRequest:
    """Validate the input strictly; hostile or malformed values raise InvalidInput before anything runs."""
    if not isinstance(event, dict):
        raise InvalidInput("invalid sweep request: expected a JSON object such as events/manual-sweep.json")
    try:
        given = _SweepInput.model_validate(event)
        return SweepRequest(dry_run=given.dryRun, federation=given.federation, trigger=given.trigger,
                            execution_name=execution_name)
    except ValidationError as error:
        # Only field locations and messages: never echo the whole (possibly hostile) input back.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InvalidInput(f"invalid sweep request: {problems}") from None


# ---------------------------------------------------------------- the clusters


def tagged_clusters(clients: ClientFactory, request: SweepRequest, config: Settings) -> SweepClusters:
    """Every live top-level ParallelCluster stack carrying the federation tag in the configured regions (only
    ``request.federation``'s when given) that the registry admits. Members go before their federation's
    accounting cluster, so its verification sees the members already repaired. A stack whose tag value is
    invalid, or that no registry entry admits, is reported, not dropped."""
    declared = {f.name: f for f in registry.federations(clients("ssm", config.deployment_region), config)}
    clusters, unchecked = [], []
    for region, stack in discovery.live_stacks(clients, config.regions_to_search(config.deployment_region)):
        try:
            federation, _ = discovery.membership(stack, config)
            if federation is None or (request.federation and federation != request.federation):
                continue
            if federation not in declared or declared[federation].admission(stack["StackId"]) is None:
                unchecked.append(UncheckedStack(cluster=stack["StackName"], region=region, not_admitted=True,
                                                error=f"{stack['StackId']} asks to join {federation} (its tag) but "
                                                      "the registry does not admit it"))
                continue
            clusters.append(TaggedCluster(
                cluster=stack["StackName"], stack_id=stack["StackId"], federation=federation, region=region,
                is_accounting=declared[federation].is_accounting(stack["StackId"]),
            ))
        except (InvalidInput, ValidationError) as error:
            unchecked.append(UncheckedStack(cluster=stack["StackName"], region=region, error=str(error).splitlines()[0]))
    clusters.sort(key=lambda c: (c.federation, c.is_accounting, c.cluster, c.region))
    gone = departed_clusters(clients, request, declared, config)
    readers = departed_readers(clients, request, declared, config)
    logger.info("clusters to sweep", extra={"clusters": [c.cluster for c in clusters],
                                            "unchecked": [u.cluster for u in unchecked],
                                            "departed": [d.stack_id for d in gone]})
    # unpair first: the pairings that follow no longer see (or verify against) a departed cluster
    return SweepClusters(clusters=([] if request.dry_run else gone) + clusters, unchecked=unchecked, departed=gone,
                         departed_readers=readers)


def paired_stacks(ec2_for: Callable[[str], Any], regions: list[str], deployment: str) -> dict[tuple[str, str], str]:
    """(StackId, federation) -> region of every stack this deployment's rules name as source or target (their
    slurm-multicluster:source-stack / target-stack tags): every cluster paired, whatever its tags say now."""
    found: dict[tuple[str, str], str] = {}
    for region in regions:
        owned = [{"Name": f"tag:{ingress.DEPLOYMENT_TAG}", "Values": [deployment]},
                 {"Name": "tag-key", "Values": [ingress.OWNER_TAG]}]
        for page in ec2_for(region).get_paginator("describe_security_group_rules").paginate(Filters=owned):
            for rule in page["SecurityGroupRules"]:
                tags = {t["Key"]: t["Value"] for t in rule.get("Tags", [])}
                for key in (ingress.SOURCE_STACK_TAG, ingress.TARGET_STACK_TAG):
                    if v.STACK_ARN.fullmatch(tags.get(key, "")) and v.FEDERATION_NAME.fullmatch(tags[ingress.OWNER_TAG]):
                        found[(tags[key], tags[ingress.OWNER_TAG])] = v.STACK_ARN.fullmatch(tags[key])["region"]
    return found


def why_departed(stack: dict[str, Any] | None, federation: str, declared: dict[str, registry.Federation],
                 config: Settings) -> tuple[str | None, bool]:
    """(why the stack is no admitted, tagged member of ``federation`` any more, or None when it still is; whether
    the registry revoked it)."""
    if stack is None or stack["StackStatus"].startswith("DELETE"):
        return "its stack was deleted", False
    try:
        tagged, _ = discovery.membership(stack, config)
    except InvalidInput:
        tagged = None
    if tagged != federation:
        return (f"its {config.federation_tag_key} tag no longer names {federation}" if tagged is None else
                f"its {config.federation_tag_key} tag now names {tagged}, not {federation}"), False
    if federation not in declared:
        return f"federation {federation} is no longer declared in the registry", True
    if declared[federation].admission(stack["StackId"]) is None:
        return f"the registry no longer admits it to {federation}", True
    return None, False


def departed_clusters(clients: ClientFactory, request: SweepRequest, declared: dict[str, registry.Federation],
                      config: Settings) -> list[TaggedCluster]:
    """Every cluster this deployment's rules name that is no longer an admitted, tagged member of the federation
    the rules are of (only ``request.federation``'s when given). Reads only."""
    regions = config.regions_to_search(config.deployment_region)
    gone = []
    for (stack_id, federation), region in sorted(paired_stacks(lambda r: clients("ec2", r), regions,
                                                               config.deployment_id).items()):
        if request.federation and federation != request.federation:
            continue
        stack = discovery.describe_stack(clients("cloudformation", region), stack_id)
        if stack is not None and stack["StackStatus"] not in discovery.LIVE_STATUSES and \
                not stack["StackStatus"].startswith("DELETE"):
            continue  # being created or rolled back: a later sweep sees how it ends
        reason, revoked = why_departed(stack, federation, declared, config)
        if reason:
            gone.append(TaggedCluster(cluster=v.STACK_ARN.fullmatch(stack_id)["name"], stack_id=stack_id,
                                      federation=federation, region=region, workflow="unpairing", reason=reason,
                                      revoked=revoked))
    return gone


def departed_readers(clients: ClientFactory, request: SweepRequest, declared: dict[str, registry.Federation],
                     config: Settings) -> list[DepartedReaders]:
    """Per declared federation (only ``request.federation`` when given), the roles its secret lets read the key
    that no admitted, tagged, live member's head node has. Reads only."""
    found = []
    for name, federation in sorted(declared.items()):
        if request.federation and name != request.federation:
            continue
        readers = discovery.secret_readers(clients, name, federation, config)
        if readers.secret_arn and readers.departed:
            found.append(DepartedReaders(federation=name, secret_arn=readers.secret_arn, region=readers.region,
                                         roles=readers.departed))
    return found


def revoke_departed_readers(clients: ClientFactory, request: SweepRequest, config: Settings) -> list[DepartedReaders]:
    """Without dryRun: take read access from every departed reader, found again now (the sweep's unpairings may
    have revoked some already). Only ever removes readers, so a pairing running meanwhile loses none of its own
    but, at worst, a role its SyncMungeKey added in the same instant (its pairing then fails and rolls back)."""
    declared = {f.name: f for f in registry.federations(clients("ssm", config.deployment_region), config)}
    revoked = []
    for found in departed_readers(clients, request, declared, config):
        munge_secret.revoke_readers(clients("secretsmanager", found.region), found.secret_arn, found.roles,
                                    config.break_glass_role_arn)
        logger.warning("revoked the munge key read access of roles no member has",
                       extra={"federation": found.federation, "roles": found.roles})
        revoked.append(found.model_copy(update={"revoked": True}))
    return revoked


# ---------------------------------------------------------------- one pairing run per cluster


def pairing_execution_name(sweep_execution: str, cluster: str) -> str:
    """Deterministic per (sweep execution, cluster), so a retried start finds its execution; at most 80 chars."""
    digest = hashlib.sha256(sweep_execution.encode()).hexdigest()[:12]
    return v.require(v.BACKUP_ID, f"sweep-{digest}-{cluster}", "pairing execution name")


def start_pairing_run(sfn: Any, pairing_state_machine_arn: str, run: PairingRun) -> PairingRun:
    """Start the pairing state machine on one cluster with the manual request format (dryRun as the sweep's), or,
    for a departed cluster, the unpairing state machine (``pairing_state_machine_arn`` is then the unpairing's)."""
    name = pairing_execution_name(run.request.execution_name, run.cluster.cluster)
    pairing_input: dict[str, Any] = {"stackName": run.cluster.cluster, "region": run.cluster.region}
    if run.cluster.workflow == "pairing":
        pairing_input["dryRun"] = run.request.dry_run
    else:  # where its rules say it was paired; a revoked cluster gets nothing run on it, the others rotate
        pairing_input.update({"federation": run.cluster.federation, "revoked": run.cluster.revoked})
    if run.cluster.stack_id:  # the identity: a same-named stack created meanwhile is another cluster
        pairing_input["stackId"] = run.cluster.stack_id
    try:
        arn = sfn.start_execution(stateMachineArn=pairing_state_machine_arn, name=name,
                                  input=json.dumps(pairing_input))["executionArn"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "ExecutionAlreadyExists":
            raise
        # A retried step: the execution this sweep started for this cluster already runs (or ran).
        arn = pairing_state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"
    logger.info("pairing run started", extra={"cluster": run.cluster.cluster, "execution": arn})
    return run.model_copy(update={"execution_arn": arn, "poll_seconds": FIRST_POLL_SECONDS})


def check_pairing_run(sfn: Any, run: PairingRun) -> dict[str, Any]:
    """The run's status; once it ended, its plan (SUCCEEDED) or error and cause. While RUNNING, the next poll
    interval (doubling up to LONGEST_POLL_SECONDS) rides along for the Wait state."""
    described = sfn.describe_execution(executionArn=run.execution_arn)
    status = described["status"]
    result = ClusterResult(cluster=run.cluster.cluster, federation=run.cluster.federation, region=run.cluster.region,
                           status=status, workflow=run.cluster.workflow, execution_arn=run.execution_arn)
    if status == "SUCCEEDED" and run.cluster.workflow == "unpairing":
        result.plan = {"unpairing": json.loads(described.get("output") or "null"), "stackId": run.cluster.stack_id}
    elif status == "SUCCEEDED":
        output = json.loads(described.get("output") or "null")
        if isinstance(output, dict) and "alreadyPaired" in output:
            result.plan = output
        else:  # the pairing ended without a plan (e.g. the stack lost its tag meanwhile)
            result.status, result.error = "FAILED", "NoPlan"
            result.cause = "the pairing run ended without a plan: the cluster is no longer a federation member"
    elif status != "RUNNING":
        result.error = described.get("error") or status
        result.cause = described.get("cause") or ""
    if status == "RUNNING":
        return {**run.state(), "status": status, "pollSeconds": min(LONGEST_POLL_SECONDS, run.poll_seconds * 2)}
    return result.state()


# ---------------------------------------------------------------- the report


def _rule_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    return (rule.get("region"), rule.get("groupId"), rule.get("fromPort"), rule.get("toPort"),
            rule.get("sourceKind"), rule.get("sourceGroupId"), rule.get("sourcePrefixListId"), rule.get("sourceCidr"))


def missing_rules_by_cluster(results: list[ClusterResult]) -> dict[str, int]:
    """Missing ingress rules counted once each, on the cluster whose security group lacks them.

    A rule between two members is in both members' plans; counted on its target, the report says which
    cluster drifted instead of blaming both ends."""
    checked = {r.cluster for r in results}
    seen: dict[tuple[Any, ...], str] = {}
    for result in results:
        for rule in (result.plan or {}).get("ingressRules", []):
            target = rule.get("targetCluster") if rule.get("targetCluster") in checked else result.cluster
            seen.setdefault(_rule_key(rule), target)
    counts: dict[str, int] = {}
    for target in seen.values():
        counts[target] = counts.get(target, 0) + 1
    return counts


def missing_entries_by_cluster(results: list[ClusterResult]) -> dict[str, int]:
    """Prefix-list entries the plans add, counted once each (every member's plan holds the whole federation's
    network), on the member whose subnet is missing (the plan's entrySources), else on the cluster whose plan has it."""
    checked = {r.cluster for r in results}
    seen: dict[tuple[Any, ...], str] = {}
    for result in results:
        for vpc in ((result.plan or {}).get("network") or {}).get("vpcs") or []:
            for cidr in vpc.get("addEntries") or []:
                source = (vpc.get("entrySources") or {}).get(cidr)
                seen.setdefault((vpc.get("region"), vpc.get("vpcId"), cidr), source if source in checked else result.cluster)
    counts: dict[str, int] = {}
    for cluster in seen.values():
        counts[cluster] = counts.get(cluster, 0) + 1
    return counts


def drift_items(plan: dict[str, Any], missing_rules: int, missing_entries: int = 0) -> list[str]:
    """The plan's differences from a paired cluster, in an admin's words."""
    items = []
    if missing_rules:
        items.append(f"{missing_rules} missing ingress rule{'s' if missing_rules > 1 else ''}")
    if missing_entries:  # its subnets (a queue's included) not yet in the prefix lists of the other VPCs
        items.append(f"{missing_entries} subnet{'s' if missing_entries > 1 else ''} missing from the other VPCs' "
                     "prefix lists")
    unwanted = len((plan.get("network") or {}).get("revoke") or [])
    if unwanted:  # SrunPortRange turned off or changed since these were opened
        items.append(f"{unwanted} ingress rule{'s' if unwanted > 1 else ''} SrunPortRange no longer opens")
    key = plan.get("mungeKey") or {}
    if key.get("headKeyDiffers"):
        items.append("munge key differs")
    else:  # half-paired: the head node runs the federation key, not everything that copies from it
        if key.get("staleSharedCopies"):
            items.append(f"shared munge key copies not on the federation key: {', '.join(key['staleSharedCopies'])}")
        if key.get("installOnInstances"):
            nodes = key["installOnInstances"]
            items.append(f"{len(nodes)} compute/login node{'s' if len(nodes) > 1 else ''} on another munge key")
    accounting = plan.get("accounting") or {}
    if accounting.get("change"):
        current = (f"{accounting.get('currentHost')}:{accounting.get('currentPort') or ''}".rstrip(":")
                   if accounting.get("currentHost") else "no slurmdbd")
        items.append(f"accounting points at {current} not {accounting.get('host')}:{accounting.get('port')}")
    if accounting.get("stopLocalSlurmdbd"):
        items.append("own slurmdbd still running")
    return items


def report(given: ReportInput) -> SweepReport:
    """The sweep report: which clusters are in sync, drifted, were repaired (not with dryRun), or failed."""
    rules = missing_rules_by_cluster(given.results)
    entries = missing_entries_by_cluster(given.results)
    in_sync, drifted, repaired = [], [], []
    failed = [FailedCluster(cluster=u.cluster, error=f"not checked: {u.error}") for u in given.unchecked
              if not u.not_admitted]
    unpaired = []
    members: dict[str, int] = {}
    for result in given.results:
        if result.workflow == "unpairing" and result.status == "SUCCEEDED" and result.plan:
            unpaired.append(str(result.plan.get("stackId")))
            continue
        if result.status != "SUCCEEDED" or result.plan is None:
            failed.append(FailedCluster(cluster=result.cluster, federation=result.federation,
                                        error=f"{result.error}: {concise(result.cause)}" if result.cause else str(result.error)))
            continue
        members[result.federation] = members.get(result.federation, 0) + 1
        items = drift_items(result.plan, rules.get(result.cluster, 0), entries.get(result.cluster, 0))
        if not items:
            in_sync.append(result.cluster)
            continue
        line = DriftedCluster(cluster=result.cluster, federation=result.federation, drift=items)
        drifted.append(line)
        if not given.request.dry_run:
            repaired.append(line)  # the pairing run SUCCEEDED: it applied its plan and verified the cluster
    return SweepReport(
        dry_run=given.request.dry_run,
        federation=given.request.federation,
        checked=[r.cluster for r in given.results if r.workflow == "pairing"],
        in_sync=in_sync,
        drifted=drifted,
        repaired=repaired,
        failed=failed,
        not_admitted=[u.error.split(" ", 1)[0] for u in given.unchecked if u.not_admitted],
        departed=[DepartedLine(cluster=d.cluster, stack_id=d.stack_id or "", federation=d.federation,
                               reason=d.reason or "") for d in given.departed],
        unpaired=unpaired,
        departed_readers=given.departed_readers,
        members=members,
    )


def publish(events: Any, bus: str, the_report: SweepReport, execution_name: str) -> None:
    """One "Slurm Federation Drift Report" event on the bus the pairing events go to."""
    announcements.publish(events, bus, REPORT_DETAIL_TYPE, [{**the_report.state(), "execution": execution_name}])
