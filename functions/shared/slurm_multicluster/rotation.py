"""Munge key rotation across a whole federation, as plain functions: the Lambda handlers are thin adapters.

It follows Secrets Manager's rotation protocol on the federation secret, with the key never leaving the nodes:
create (the accounting head node generates the key and puts it as AWSPENDING), set (every node of every
member stages it, then all members switch at once), test (the federation works on it), finish (AWSPENDING
becomes AWSCURRENT, the old key AWSPREVIOUS). Any failure switches every member back to the key that was
current, verifies the federation works on it, and takes the AWSPENDING label off the new version.
The Lambdas hold no secretsmanager:GetSecretValue: they see fingerprints and version ids only.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slurm_multicluster import discovery, munge_secret, node_commands, node_rollback, registry
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, NodeCommandFailed, PairingError, PrerequisiteFailed, VerificationFailed, concise
from slurm_multicluster.models import ExecutionName, FederationName, Member, Region, StateModel
from slurm_multicluster.node_commands import NodeResult
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

ClientFactory = Callable[[str, str], Any]

# Version ids of rotated keys are derived from the execution ARN in this namespace, so a repeated step of one
# execution always names the same version (Secrets Manager's ClientRequestToken idempotency).
VERSION_NAMESPACE = uuid.UUID("0b7c5a3e-58d6-4c1e-9a43-5e1f1f2b6d10")
EXECUTION_ARN = re.compile(r"^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:execution:[A-Za-z0-9_-]{1,80}:[A-Za-z0-9._-]{1,80}$")


class MemberStagingFailed(PairingError):
    """At least one member could not stage the pending key (the message names them)."""


class MemberSwitchFailed(PairingError):
    """At least one member could not switch to the pending key (the message names them)."""


class RollbackFailed(PairingError):
    """At least one member could not be switched back to the previous key (the message names them)."""


# ---------------------------------------------------------------- state


class RotationRequest(StateModel):
    """A validated request to rotate one federation's munge key."""

    federation: FederationName
    region: Region
    trigger: Literal["manual", "schedule", "eviction"]
    execution_name: ExecutionName
    version_id: str = Field(description="ClientRequestToken of the new key's version, derived from the execution")


class RotationPlan(StateModel):
    """What the rotation starts from: the secret, the accounting cluster and the key every member runs now."""

    federation: str
    secret_arn: str
    secret_region: str
    accounting_cluster: str
    # its place in the state's members: SwitchAccountingMember and RollBackAccountingMember take it first
    accounting_index: int = 0
    clusters: list[str]
    current_sha256: str
    current_version_id: str


class PendingKey(StateModel):
    """The new key, by fingerprint and version id only."""

    version_id: str
    sha256: str
    key_bytes: int


class RotationState(StateModel):
    """The rotation state machine's state as the whole-federation steps receive it."""

    request: RotationRequest
    members: list[Member] = []
    plan: RotationPlan | None = None
    pending_key: PendingKey | None = None

    def planned(self) -> RotationPlan:
        if self.plan is None:
            raise InvalidInput("this step needs the plan made by CheckRotationPrerequisites")
        return self.plan

    def pending(self) -> PendingKey:
        if self.pending_key is None:
            raise InvalidInput("this step needs the pending key made by CreatePendingKey")
        return self.pending_key


class MemberStep(StateModel):
    """One Map item: what a per-member step (stage, switch, roll back) needs."""

    member: Member
    request: RotationRequest
    plan: RotationPlan
    pending_key: PendingKey | None = None


class MemberOutcome(StateModel):
    """What one member's step did; a failed step is caught in its Map iteration and reported as ok: false."""

    cluster_name: str
    ok: bool
    error: str | None = None
    cause: str | None = None
    nodes: dict[str, Any] = {}


class FederationCheck(RotationState):
    """TestFederation's input: the state, the fingerprint every head node must run, earlier member outcomes."""

    expect_sha256: str
    outcomes: list[MemberOutcome] = []


class OutcomesCheck(StateModel):
    """ConfirmEveryMember...: the outcomes of one fan-out step."""

    step: Literal["StagePendingKey", "SwitchMembers"]
    outcomes: list[MemberOutcome]


# ---------------------------------------------------------------- the request


class _RotationInput(BaseModel):
    """What `sam remote invoke` (events/manual-rotate.json) and the schedule pass."""

    model_config = ConfigDict(extra="forbid")
    federation: str
    region: str
    trigger: Literal["manual", "schedule", "eviction"] = "manual"  # eviction: a member was revoked


def version_id_for(execution_id: str) -> str:
    """The new key's version id for this execution: the same on every retry, different for every execution."""
    return str(uuid.uuid5(VERSION_NAMESPACE, execution_id))


def normalize(event: Any, execution_name: str, execution_id: str) -> RotationRequest:
    """Validate the input strictly; hostile or malformed values raise InvalidInput before anything runs."""
    if not isinstance(event, dict):
        raise InvalidInput("invalid rotation request: expected a JSON object such as events/manual-rotate.json")
    try:
        given = _RotationInput.model_validate(event)
        return RotationRequest(
            federation=given.federation,
            region=given.region,
            trigger=given.trigger,
            execution_name=execution_name,
            version_id=version_id_for(v.require(EXECUTION_ARN, execution_id, "execution id")),
        )
    except ValidationError as error:
        # Only field locations and messages: never echo the whole (possibly hostile) input back.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InvalidInput(f"invalid rotation request: {problems}") from None


# ---------------------------------------------------------------- discovery and prerequisites


def discover_members(clients: ClientFactory, request: RotationRequest,
                     config: Settings) -> tuple[list[Member], list[discovery.SkippedMember]]:
    """(members, skipped): every live member of the federation, with head, compute and login nodes (AWS side
    only), and the admitted stacks left out (discovery.resolvable_members says why)."""
    declared = registry.declared(clients, config, request.federation)
    stacks = discovery.federation_stacks(clients, config.regions_to_search(request.region), declared, config)
    if not stacks:
        raise PrerequisiteFailed(
            f"federation {request.federation} has no member: no live ParallelCluster stack that the registry admits is "
            f"tagged {config.federation_tag_key}={request.federation} in {', '.join(config.regions_to_search(request.region))}"
        )
    members, skipped = discovery.resolvable_members(clients, stacks, declared, config)
    logger.info("federation members", extra={"members": [m.cluster_name for m in members],
                                             "skipped": [s.stack_id for s in skipped]})
    return members, skipped


def _current_version(secretsmanager: Any, secret_name: str, config: Settings) -> tuple[str, str]:
    """(ARN, version id holding AWSCURRENT) of the federation secret; PrerequisiteFailed when it has none, or when
    this deployment did not create it (a rotation must never write a new key into someone else's secret)."""
    described = munge_secret.check_ours(secretsmanager, secret_name, config)
    if described is None:
        raise PrerequisiteFailed(
            f"the federation secret {secret_name} does not exist: pair a member first (the pairing creates it)"
        )
    version = munge_secret.current_version(described)
    if version is None:
        raise PrerequisiteFailed(f"the federation secret {secret_name} has no AWSCURRENT value: pair a member first")
    return described["ARN"], version


def check_prerequisites(clients: ClientFactory, request: RotationRequest, members: list[Member], config: Settings) -> RotationPlan:
    """Everything that must hold before the first change; raises PrerequisiteFailed listing every problem."""
    accounting = [m for m in members if m.is_accounting]
    if len(accounting) != 1:
        raise PrerequisiteFailed(
            f"federation {request.federation}: its accounting cluster (the registry's accountingStackArn) is not a "
            "live, tagged stack with a running head node"
        )
    accounting_member = accounting[0]
    problems = []
    for member in members:
        if member.slurm is None:
            problems.append(f"{member.cluster_name}: its Slurm settings were not read")
        elif not member.slurm.slurmctld_active:
            problems.append(f"{member.cluster_name}: slurmctld is not active on its head node")
    if accounting_member.slurm is not None and not accounting_member.slurm.slurmdbd_active:
        problems.append(f"{accounting_member.cluster_name}: the federation's slurmdbd is not active")
    if problems or accounting_member.slurm is None:
        raise PrerequisiteFailed("; ".join(problems))
    federation_sha = accounting_member.slurm.munge_key_sha256
    different = [m.cluster_name for m in members if m.slurm and m.slurm.munge_key_sha256 != federation_sha]
    if different:
        raise PrerequisiteFailed(
            f"{', '.join(different)} run(s) a munge key other than the accounting cluster "
            f"{accounting_member.cluster_name}'s: pair them (run the pairing workflow) before rotating the key"
        )
    secret_name = config.munge_key_secret_name(request.federation)
    arn, current_version = _current_version(clients("secretsmanager", accounting_member.region), secret_name, config)
    return RotationPlan(
        federation=request.federation,
        secret_arn=arn,
        secret_region=accounting_member.region,
        accounting_cluster=accounting_member.cluster_name,
        accounting_index=members.index(accounting_member),
        clusters=[m.cluster_name for m in members],
        current_sha256=federation_sha,
        current_version_id=current_version,
    )


# ---------------------------------------------------------------- createSecret


def _member(members: list[Member], name: str) -> Member:
    return next(m for m in members if m.cluster_name == name)


def _labels(secretsmanager: Any, secret_arn: str) -> dict[str, list[str]]:
    return secretsmanager.describe_secret(SecretId=secret_arn).get("VersionIdsToStages", {})


def create_pending_key(clients: ClientFactory, state: RotationState, config: Settings) -> PendingKey:
    """The accounting head node generates the new key and puts it as AWSPENDING (version id from the execution)."""
    plan, request = state.planned(), state.request
    accounting = _member(state.members, plan.accounting_cluster)
    result = node_commands.run_script_checked(
        clients("ssm", accounting.region),
        [accounting.head_node.instance_id],
        "create-pending-munge-key.sh",
        {"SecretId": plan.secret_arn, "Region": plan.secret_region, "VersionId": request.version_id,
         "KeyBytes": str(config.munge_key_bytes)},
        timeout_seconds=120,
        comment=f"slurm-multicluster: new munge key for {plan.federation} on {accounting.cluster_name}",
    )[accounting.head_node.instance_id].result
    if result.get("currentSha256") != plan.current_sha256:
        raise PrerequisiteFailed("the secret's AWSCURRENT is not the key the federation runs")
    labels = _labels(clients("secretsmanager", plan.secret_region), plan.secret_arn)
    if "AWSPENDING" not in labels.get(request.version_id, []):
        raise NodeCommandFailed(f"version {request.version_id} is not labelled AWSPENDING after createSecret")
    pending = PendingKey(
        version_id=request.version_id,
        sha256=v.require(v.SHA256, result.get("sha256"), "pending key fingerprint"),
        key_bytes=int(result.get("keyBytes") or 0),
    )
    logger.info("pending key created", extra={"pending": pending.state(), "newly_created": result.get("changed")})
    return pending


# ---------------------------------------------------------------- setSecret: stage, then switch


def _other_nodes(member: Member) -> list[str]:
    return member.compute_instance_ids + member.login_instance_ids


def stage_member(clients: ClientFactory, step: MemberStep, config: Settings) -> MemberOutcome:
    """Stage the pending key on the member's head node (and its shared dirs), then on its other nodes (a node
    shut down meanwhile is no failure; one launched meanwhile is switched from the shared dir)."""
    member, pending = step.member, step.pending_key
    if pending is None:
        raise InvalidInput("StageMemberKey needs the pending key")
    ssm = clients("ssm", member.region)
    common = {"ExpectSha256": pending.sha256, "BackupId": step.request.execution_name}
    nodes = node_commands.summary(node_commands.run_script_checked(
        ssm, [member.head_node.instance_id], "stage-munge-key.sh",
        {"SecretId": step.plan.secret_arn, "Region": step.plan.secret_region, "VersionStage": "AWSPENDING",
         **common, "SharedDirs": True},
        timeout_seconds=config.node_command_timeout_seconds,
        comment=f"slurm-multicluster: stage the pending munge key on {member.cluster_name} head node",
    ))
    if _other_nodes(member):  # they copy what the head node staged in its NFS-shared munge dir
        nodes.update(node_commands.summary(node_commands.run_on_fleet(
            ssm, clients("ec2", member.region), _other_nodes(member), "stage-munge-key.sh",
            {"FromSharedDir": True, **common}, timeout_seconds=config.node_command_timeout_seconds,
            comment=f"slurm-multicluster: stage the pending munge key on {member.cluster_name} compute nodes",
        )))
    return MemberOutcome(cluster_name=member.cluster_name, ok=True, nodes=nodes)


# The node list is read again right before each pass over the compute and login nodes and once more after it:
# nodes launched since the plan are switched too, from the shared dir the head node wrote first.
FLEET_PASSES = 3


def _switch_fleet(clients: ClientFactory, member: Member, parameters: dict[str, Any], staged: set[str],
                  shared_written: float, what: str, config: Settings) -> dict[str, Any]:
    """Install the key on every compute and login node running now: with ``parameters`` on the ``staged`` ones,
    from the shared dir on any other. A node gone meanwhile is reported ``gone``; one launched after the shared
    dir was written that SSM does not reach yet is ``booting`` (ParallelCluster's boot copies the shared key)."""
    ssm, ec2 = clients("ssm", member.region), clients("ec2", member.region)
    from_shared = {"FromSharedDir": True, "ExpectSha256": parameters["ExpectSha256"],
                   "BackupId": parameters["BackupId"], "Restart": "slurmd"}
    nodes: dict[str, Any] = {}
    seen: set[str] = set()
    for _ in range(FLEET_PASSES):
        running = discovery.fleet(clients, member)
        todo = sorted(set(running) - seen)
        if not todo:
            break
        seen |= set(todo)
        launched = [i for i in todo if i not in staged]
        online = discovery.ssm_online(ssm, launched) if launched else set()
        booting = [i for i in launched if i not in online and running[i] >= shared_written]
        nodes.update({i: {"booting": True} for i in booting})
        for instance_ids, script_parameters, which in (
                ([i for i in todo if i in staged], parameters, "compute nodes"),
                ([i for i in launched if i not in booting], from_shared, "nodes launched during it")):
            nodes.update(node_commands.summary(node_commands.run_on_fleet(
                ssm, ec2, instance_ids, "install-munge-key.sh", script_parameters,
                timeout_seconds=config.node_command_timeout_seconds,
                comment=f"slurm-multicluster: {what} {member.cluster_name} {which}",
            )))
    nodes.update({i: {"gone": True} for i in staged - seen})  # shut down before the switch reached them
    return nodes


def switch_member(clients: ClientFactory, step: MemberStep, config: Settings) -> MemberOutcome:
    """Switch the member to the staged key: head node (the shared dirs first, then munge and slurmdbd, with
    slurmctld stopped), then every compute and login node running by then (munge, slurmd), launched ones included,
    then slurmctld starts again on the head node.

    slurmctld is held down across the fleet's switch because a job that ends on a node still on the old key reports
    its end to slurmctld once: a slurmctld on the new key refuses that report and the job stays RUNNING for good
    (seen on real daemons), while a slurmctld that is down makes slurmstepd retry until it answers. The rollback
    (restore-backup.sh) starts a held slurmctld again."""
    member, pending = step.member, step.pending_key
    if pending is None:
        raise InvalidInput("SwitchMember needs the pending key")
    ssm = clients("ssm", member.region)
    common = {"FromStaged": True, "ExpectSha256": pending.sha256, "BackupId": step.request.execution_name}
    head = [member.head_node.instance_id]
    try:
        nodes = node_commands.summary(node_commands.run_script_checked(
            ssm, head, "install-munge-key.sh", {**common, "SharedDirs": True, "Restart": "slurmdbd", "Hold": "slurmctld"},
            timeout_seconds=config.node_command_timeout_seconds,
            comment=f"slurm-multicluster: switch {member.cluster_name} head node to the new munge key",
        ))
        nodes.update(_switch_fleet(clients, member, {**common, "Restart": "slurmd"}, set(_other_nodes(member)),
                                   time.time(), "switch to the new munge key:", config))
        started = node_commands.summary(node_commands.run_script_checked(
            ssm, head, "install-munge-key.sh", {**common, "StartHeld": True},
            timeout_seconds=config.node_command_timeout_seconds,
            comment=f"slurm-multicluster: start {member.cluster_name} slurmctld again on the new munge key",
        ))
        nodes[head[0]] = node_commands.and_then(nodes[head[0]], started[head[0]])
    except NodeCommandFailed as error:
        raise NodeCommandFailed(f"{member.cluster_name}: {error}") from None
    return MemberOutcome(cluster_name=member.cluster_name, ok=True, nodes=nodes)


def confirm_outcomes(check: OutcomesCheck) -> list[str]:
    """The members whose step succeeded; raises naming every member whose step failed."""
    failed = [o for o in check.outcomes if not o.ok]
    if failed:
        details = "; ".join(f"{o.cluster_name}: {o.error}: {concise(o.cause or '')}" for o in failed)
        names = ", ".join(o.cluster_name for o in failed)
        error = MemberStagingFailed if check.step == "StagePendingKey" else MemberSwitchFailed
        raise error(f"{check.step} failed on {names} ({details})")
    return [o.cluster_name for o in check.outcomes]


# ---------------------------------------------------------------- testSecret


def _in_parallel(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the calls at once; returns name -> result or the exception it raised."""
    if not calls:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(calls))) as pool:
        # each thread gets this invocation's context: the Lambda's deadline and its commands in flight
        futures = {name: pool.submit(contextvars.copy_context().run, call) for name, call in calls.items()}
    results: dict[str, Any] = {}
    for name, future in futures.items():
        error = future.exception()
        results[name] = error if error is not None else future.result()
    return results


def verify_federation(clients: ClientFactory, test: FederationCheck, config: Settings) -> dict[str, Any]:
    """Prove the federation works on the expected key; raises naming every member that does not.

    On every head node at once: it runs the expected key, `sacctmgr` lists every member with a ControlHost,
    `sbatch -M <peer> --test-only` works to each peer, no node is down. Then munge credentials go round the
    ring of head nodes (each decoded by the next), which holds only if all run the same key.
    """
    failed_before = [o for o in test.outcomes if not o.ok]
    if failed_before:
        details = "; ".join(f"{o.cluster_name}: {o.error}: {concise(o.cause or '')}" for o in failed_before)
        raise RollbackFailed(f"could not switch back {', '.join(o.cluster_name for o in failed_before)} ({details})")
    members = test.members
    names = {m.cluster_name: m.slurm.cluster_name for m in members if m.slurm}
    deadline = str(config.verify_deadline_seconds)
    ssm = _ssm_clients(clients, members)

    def verify(member: Member) -> Callable[[], dict[str, Any]]:
        peers = [name for cluster, name in names.items() if cluster != member.cluster_name]
        parameters = {"Peers": ",".join(peers), "Deadline": deadline}
        return lambda: node_commands.run_script(
            ssm[member.region], [member.head_node.instance_id], "verify-member.sh", parameters,
            timeout_seconds=int(deadline) + 60,
            comment=f"slurm-multicluster: test {member.cluster_name} in federation {member.federation}",
        )[member.head_node.instance_id].result

    problems: list[str] = []
    checks: dict[str, Any] = {}
    if len(members) > 1:
        verified = _in_parallel({m.cluster_name: verify(m) for m in members})
        for cluster, result in verified.items():
            if isinstance(result, Exception):
                problems.append(f"{cluster}: {result}")
            elif not result.get("ok"):
                problems.append(f"{cluster}: {result.get('error')}")
            elif result.get("mungeKeySha256") != test.expect_sha256:
                problems.append(f"{cluster}: its head node runs munge key {result.get('mungeKeySha256')}, "
                                f"not {test.expect_sha256}")
            checks[cluster] = result if isinstance(result, dict) else {"error": str(result)}
        if not problems:
            checks["munge"] = _munge_ring(ssm, members, problems)
    else:
        only = members[0]
        result = node_commands.run_script(
            clients("ssm", only.region), [only.head_node.instance_id], "discover-slurm.sh", {},
            timeout_seconds=120, comment=f"slurm-multicluster: test {only.cluster_name}",
        )[only.head_node.instance_id].result
        if result.get("mungeKeySha256") != test.expect_sha256 or not result.get("mungeActive"):
            problems.append(f"{only.cluster_name}: munge does not run the expected key")
        checks[only.cluster_name] = {"mungeKeySha256": result.get("mungeKeySha256")}
    _check_fleet_keys(clients, members, test.expect_sha256, problems, checks)
    if problems:
        raise VerificationFailed("; ".join(problems))
    return checks


def _check_fleet_keys(clients: ClientFactory, members: list[Member], expect_sha256: str, problems: list[str],
                      checks: dict[str, Any]) -> None:
    """Every compute and login node running now that SSM reaches reports the expected key's fingerprint
    (report-munge-key.sh, read-only); any other, or none, is a problem naming the nodes."""
    clients_by_region = {r: (clients("ssm", r), clients("ec2", r)) for r in sorted({m.region for m in members})}

    def fingerprints(member: Member) -> Callable[[], dict[str, NodeResult]]:
        ssm, ec2 = clients_by_region[member.region]

        def run() -> dict[str, NodeResult]:
            running = sorted(discovery.fleet(clients, member))
            reachable = sorted(discovery.ssm_online(ssm, running)) if running else []
            return node_commands.raise_failures("report-munge-key.sh",
                                                discovery.node_keys(ssm, ec2, member.cluster_name, reachable))
        return run

    for cluster, result in _in_parallel({m.cluster_name: fingerprints(m) for m in members}).items():
        if isinstance(result, Exception):
            problems.append(f"{cluster}: cannot read its nodes' munge key: {result}")
            continue
        wrong = discovery.not_on_key(result, expect_sha256)
        if wrong:
            problems.append(f"{cluster}: nodes {', '.join(wrong)} do not run munge key {expect_sha256}")
        checks.setdefault(cluster, {})["nodesOnKey"] = sum(1 for r in result.values() if not r.gone) - len(wrong)


def _ssm_clients(clients: ClientFactory, members: list[Member]) -> dict[str, Any]:
    """One SSM client per region, made before any thread uses them (boto3 creates clients unsafely in threads)."""
    return {region: clients("ssm", region) for region in sorted({m.region for m in members})}


def _munge_ring(ssm: dict[str, Any], members: list[Member], problems: list[str]) -> dict[str, bool]:
    """Each head node's munge credential is decoded by the next head node (the last by the first)."""

    def encode(member: Member) -> Callable[[], str]:
        return lambda: v.require(v.MUNGE_CREDENTIAL, node_commands.run_script_checked(
            ssm[member.region], [member.head_node.instance_id], "munge-credential.sh", {"Mode": "encode"},
            timeout_seconds=60, comment=f"slurm-multicluster: munge credential from {member.cluster_name}",
        )[member.head_node.instance_id].result.get("credential"), "munge credential")

    credentials = _in_parallel({m.cluster_name: encode(m) for m in members})

    def decode(source: Member, target: Member) -> Callable[[], dict[str, Any]]:
        return lambda: node_commands.run_script(
            ssm[target.region], [target.head_node.instance_id], "munge-credential.sh",
            {"Mode": "decode", "Credential": credentials[source.cluster_name]}, timeout_seconds=60,
            comment=f"slurm-multicluster: decode {source.cluster_name}'s credential on {target.cluster_name}",
        )[target.head_node.instance_id].result

    pairs = {f"{m.cluster_name}->{members[(i + 1) % len(members)].cluster_name}": (m, members[(i + 1) % len(members)])
             for i, m in enumerate(members)}
    for name, credential in credentials.items():
        if isinstance(credential, Exception):
            problems.append(f"{name}: cannot make a munge credential: {credential}")
    if problems:
        return {}
    decoded = _in_parallel({pair: decode(source, target) for pair, (source, target) in pairs.items()})
    ring: dict[str, bool] = {}
    for pair, result in decoded.items():
        ok = isinstance(result, dict) and result.get("decoded") is True
        ring[pair] = ok
        if not ok:
            status = result.get("status") or result.get("error") if isinstance(result, dict) else str(result)
            problems.append(f"munge credential {pair} does not decode: {status} (the munge keys differ)")
    return ring


# ---------------------------------------------------------------- finishSecret, and its compensations


def finish(clients: ClientFactory, state: RotationState) -> dict[str, Any]:
    """AWSPENDING -> AWSCURRENT (Secrets Manager moves AWSPREVIOUS to the old version), then drop AWSPENDING."""
    plan, pending = state.planned(), state.pending()
    secrets = clients("secretsmanager", plan.secret_region)
    labels = _labels(secrets, plan.secret_arn)
    current = next((version for version, stages in labels.items() if "AWSCURRENT" in stages), None)
    if current != pending.version_id:
        if current != plan.current_version_id:
            raise PrerequisiteFailed(
                f"AWSCURRENT moved to version {current} during the rotation (expected {plan.current_version_id}): "
                "another writer changed the secret; not finishing"
            )
        if "AWSPENDING" not in labels.get(pending.version_id, []):
            raise PrerequisiteFailed(f"version {pending.version_id} is no longer AWSPENDING; not finishing")
        secrets.update_secret_version_stage(
            SecretId=plan.secret_arn, VersionStage="AWSCURRENT",
            MoveToVersionId=pending.version_id, RemoveFromVersionId=current,
        )
        logger.info("finished: AWSCURRENT moved to the new key", extra={"version": pending.version_id, "previous": current})
    try:  # the rotation is done once AWSCURRENT moved; a leftover AWSPENDING label is only untidy
        if "AWSPENDING" in _labels(secrets, plan.secret_arn).get(pending.version_id, []):
            secrets.update_secret_version_stage(
                SecretId=plan.secret_arn, VersionStage="AWSPENDING", RemoveFromVersionId=pending.version_id)
    except ClientError:
        logger.warning("could not remove AWSPENDING from the new version", exc_info=True)
    return {"versionId": pending.version_id, "previousVersionId": plan.current_version_id,
            "sha256": pending.sha256, "previousSha256": plan.current_sha256}


def discard_pending_key(clients: ClientFactory, state: RotationState) -> dict[str, Any]:
    """Compensation of CreatePendingKey: take AWSPENDING off this execution's version (AWSCURRENT is untouched)."""
    plan, request = state.planned(), state.request
    secrets = clients("secretsmanager", plan.secret_region)
    stages = _labels(secrets, plan.secret_arn).get(request.version_id, [])
    if "AWSCURRENT" in stages:
        # FinishRotation failed after its label move took effect (a lost response): the nodes are back on the
        # previous key, so the secret must say so too
        secrets.update_secret_version_stage(
            SecretId=plan.secret_arn, VersionStage="AWSCURRENT",
            MoveToVersionId=plan.current_version_id, RemoveFromVersionId=request.version_id)
        logger.warning("moved AWSCURRENT back to the previous key", extra={"version": plan.current_version_id})
        stages = _labels(secrets, plan.secret_arn).get(request.version_id, [])
    if "AWSPENDING" not in stages:
        return {"discarded": False, "reason": "no pending version of this execution"}
    secrets.update_secret_version_stage(
        SecretId=plan.secret_arn, VersionStage="AWSPENDING", RemoveFromVersionId=request.version_id)
    logger.info("discarded the pending key", extra={"version": request.version_id})
    return {"discarded": True, "versionId": request.version_id}


def roll_back_member(clients: ClientFactory, step: MemberStep, config: Settings) -> MemberOutcome:
    """Put the member's nodes back on the key that was current (their backups), restart, remove staged copies.

    Every node is tried, head node first; a daemon that died during the rotation is restarted too. The compute
    and login nodes are those running now: one launched during the rotation (no backup of this run) takes the
    previous key from the shared dir the head node's restore just put back (node_rollback.restore_member)."""
    member = step.member
    nodes, failures = node_rollback.restore_member(clients, member, step.request.execution_name, config,
                                                   previous_sha256=step.plan.current_sha256, restart_failed=True)
    if failures:
        raise RollbackFailed(f"{member.cluster_name}: {'; '.join(failures)}")
    return MemberOutcome(cluster_name=member.cluster_name, ok=True, nodes=nodes)


# ---------------------------------------------------------------- starting rotations (schedule, eviction)


def start_rotation(sfn: Any, state_machine_arn: str, federation: str, region: str, trigger: str, name: str) -> str:
    """Start the rotation state machine for ``federation`` under the execution name ``name`` (deterministic, so a
    retried start finds its execution instead of starting a second one); the execution ARN."""
    v.require(v.FEDERATION_NAME, federation, "federation name")
    v.require(v.BACKUP_ID, name, "rotation execution name")
    try:
        arn = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(
            {"federation": federation, "region": region, "trigger": trigger}))["executionArn"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "ExecutionAlreadyExists":
            raise
        arn = state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"
    logger.info("rotation started", extra={"federation": federation, "trigger": trigger, "execution": arn})
    return arn


def scheduled_execution_name(federation: str, now: datetime.datetime) -> str:
    """One scheduled rotation per federation per day (a repeated check that day finds it), at most 80 characters."""
    digest = hashlib.sha256(federation.encode()).hexdigest()[:8]
    return f"scheduled-{now:%Y%m%d}-{federation[:50]}-{digest}"


KEY_AGE_METRIC = "MungeKeyAgeDays"  # per federation (dimension federation), from the daily check


def key_age_days(secretsmanager: Any, secret_name: str, now: datetime.datetime) -> float | None:
    """Days since the federation secret's AWSCURRENT version was created (metadata only), None without one."""
    versions, token = [], None
    try:
        while True:  # botocore has no paginator for ListSecretVersionIds
            page = secretsmanager.list_secret_version_ids(SecretId=secret_name, **({"NextToken": token} if token else {}))
            versions += [version for version in page["Versions"] if "AWSCURRENT" in version.get("VersionStages", [])]
            token = page.get("NextToken")
            if not token:
                break
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise
    if not versions:
        return None
    return (now - versions[0]["CreatedDate"]).total_seconds() / 86400


def key_ages(clients: ClientFactory, config: Settings, now: datetime.datetime) -> list[dict[str, Any]]:
    """Every declared federation with a key: its region, the key's age in days and its rotationDays (or None)."""
    ages = []
    for declared in registry.federations(clients("ssm", config.deployment_region), config):
        region = declared.declaration.accounting_stack_arn.split(":")[3]  # the secret lives with the accounting cluster
        age = key_age_days(clients("secretsmanager", region), config.munge_key_secret_name(declared.name), now)
        if age is not None:
            ages.append({"federation": declared.name, "region": region, "keyAgeDays": round(age, 1),
                         "rotationDays": declared.declaration.rotation_days})
    return ages


def rotations_due(clients: ClientFactory, config: Settings, now: datetime.datetime,
                  ages: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every declared federation with a rotationDays whose key is at least that old: what the daily check rotates."""
    due = [age for age in (key_ages(clients, config, now) if ages is None else ages)
           if age["rotationDays"] is not None and age["keyAgeDays"] >= age["rotationDays"]]
    logger.info("rotations due", extra={"due": due})
    return due
