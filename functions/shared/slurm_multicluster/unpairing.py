"""Unpairing: a member leaves its federation, because its stack is being deleted or its federation tag was removed.

Order matters for a deletion. CloudFormation deletes the cluster's security groups a few minutes after
DELETE_IN_PROGRESS, and a rule of ours in a peer's group that references one of them would make that deletion
fail (DependencyViolation). So the rules go first, before the federation lease is even asked for (a rotation may
hold it for an hour), and once more under the lease (a pairing that held it may have added one meanwhile). Then,
under the lease: the departed head node role leaves the munge key secret's resource policy, and the accounting
cluster keeps the departed cluster's history (default) or removes it from accounting.

The accounting cluster itself departing cannot be repaired automatically: every other member loses accounting.
The workflow still revokes its rules and policy, and announces it loudly (event + the AccountingClusterLost
metric, which the template's alarm watches); the README says how to recover.
"""

from __future__ import annotations

from typing import Any, Callable

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import ValidationError

from slurm_multicluster import discovery, ingress, munge_secret, node_commands, pairing, registry
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, NodeCommandFailed, NodeUnreachable, PrerequisiteFailed
from slurm_multicluster.models import AddedRule, Member, PairingRequest, SlurmSettings, StateModel
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

ClientFactory = Callable[[str, str], Any]

# The metric the template's AccountingClusterLostAlarm watches (namespace SlurmMulticluster, dimension service).
ACCOUNTING_LOST_METRIC = "AccountingClusterLost"

NOT_TERMINATED = discovery.NOT_TERMINATED
STILL_UP = ("pending", "running", "stopping", "stopped")  # an ENI whose groups can still be changed


class Departure(StateModel):
    """The cluster that leaves, as far as AWS still knows it (its head node may already be going away)."""

    member: bool
    reason: str
    federation: str | None = None
    cluster_name: str
    region: str
    stack_id: str | None = None
    security_group_ids: list[str] = []
    head_node_ip: str | None = None
    head_instance_id: str | None = None  # set while its head node runs (an opt-out; not after a deletion)
    head_role_arn: str | None = None  # its head node's role, read while the instance exists: the reader to revoke
    is_accounting: bool = False


def _head_instance(ec2: Any, stack_id: str) -> dict[str, Any] | None:
    """The stack's head node (by CloudFormation's own tags), while it is not terminated."""
    found = discovery.instances(ec2, discovery.head_node_filters(stack_id, NOT_TERMINATED))
    return found[0] if len(found) == 1 else None


def _not_departing(request: PairingRequest, reason: str, stack_id: str | None = None) -> Departure:
    logger.info("not a departing member: nothing to undo", extra={"stack": stack_id or request.stack_name,
                                                                 "reason": reason})
    return Departure(member=False, reason=reason, cluster_name=request.stack_name, region=request.region,
                     stack_id=stack_id)


def discover_departure(clients: ClientFactory, request: PairingRequest, config: Settings) -> Departure:
    """Which federation the cluster leaves and which security groups it had. Reads only.

    The cluster is its StackId. Where it was paired comes from this deployment's own rules (tagged with the
    StackId), not from its current tags: a tag changed to anything, or removed, still finds them. A cluster no rule
    of ours names and no registry entry admits was never paired: nothing is changed.
    """
    name, region = request.stack_name, request.region
    stack = discovery.describe_stack(clients("cloudformation", region), request.stack_id or name)
    stack_id = (stack or {}).get("StackId", request.stack_id)
    if stack_id is None:
        return _not_departing(request, "no such stack, and no StackId given: nothing of ours can name it")
    v.require(v.STACK_ARN, stack_id, "stack ARN")
    ec2_for = lambda r: clients("ec2", r)  # noqa: E731
    paired_in = ingress.federations_of(ec2_for, config.regions_to_search(region), stack_id, config.deployment_id)
    if len(paired_in) > 1:
        raise PrerequisiteFailed(f"cluster {name} has rules of several federations ({', '.join(paired_in)}): "
                                 "unpair it by hand from each")
    tagged = None
    if stack is not None:
        try:
            tagged, _ = discovery.membership(stack, config)
        except InvalidInput:
            tagged = None  # an invalid tag value: our rules still say where it was paired
    if request.trigger in OPT_OUT_TRIGGERS and tagged is not None and (not paired_in or paired_in == [tagged]):
        return _not_departing(request, f"still asks to join {tagged} (its tag): not a departure", stack_id)
    federation = (paired_in or [request.federation or tagged])[0]
    if federation is None:
        return _not_departing(request, "no rules of ours name it and no federation tag: it was never paired", stack_id)
    v.require(v.FEDERATION_NAME, federation, "federation name")
    if request.federation and request.federation != federation:
        raise InvalidInput(f"cluster {name} is in federation {federation}, not {request.federation}")
    declared = registry.federation(clients("ssm", config.deployment_region), config, federation)
    admission = declared.admission(stack_id) if declared else None
    if request.trigger == "revoked" and admission:
        return _not_departing(request, f"the registry still admits it ({admission}): revoke that as well", stack_id)
    if not paired_in and not request.federation and (admission is None or request.trigger == "revoked"):
        return _not_departing(request, "never paired: no rules of ours name it (and the registry does not admit "
                                       "it): nothing to undo", stack_id)
    reason = ("paired before (our rules name it)" if paired_in else
              "named in the request" if request.federation else "an admitted member")
    groups = discovery.stack_security_groups(clients("cloudformation", region), stack_id) if stack else []
    head = _head_instance(clients("ec2", region), stack_id)
    if head is not None:
        groups += [g["GroupId"] for g in head.get("SecurityGroups", []) if g["GroupId"] not in groups]
    departure = Departure(
        member=True,
        reason=reason,
        federation=federation,
        cluster_name=name,
        region=region,
        stack_id=stack_id,
        security_group_ids=[v.require(v.SECURITY_GROUP_ID, g, "security group id") for g in groups],
        head_node_ip=v.ipv4(head["PrivateIpAddress"]) if head and head.get("PrivateIpAddress") else None,
        head_instance_id=(v.require(v.INSTANCE_ID, head["InstanceId"], "instance id")
                          if head and head["State"]["Name"] == "running" else None),
        is_accounting=bool(declared and declared.is_accounting(stack_id)),
        head_role_arn=discovery.instance_role_arn(clients("iam", region), head) if head else None,
    )
    logger.info("departing cluster", extra={"departure": departure.state()})
    return departure


def _departing_nodes(clients: ClientFactory, departure: Departure) -> list[dict[str, Any]]:
    """The departing cluster's compute and login nodes still up (discovery.cluster_nodes). ListStackResources
    answers for a deleted stack by its ARN for 90 days (AWS); a stack it no longer knows has no nodes left to
    detach: they went with it."""
    assert departure.stack_id
    try:
        return discovery.cluster_nodes(clients("ec2", departure.region), clients("cloudformation", departure.region),
                                       departure.cluster_name, departure.stack_id, states=STILL_UP)
    except ClientError as error:
        if not discovery.stack_missing(error):
            raise
        logger.info("stack gone: no nodes of it to detach from the federation group",
                    extra={"stack": departure.stack_id})
        return []


def revoke_departing_ingress(clients: ClientFactory, departure: Departure, config: Settings) -> list[AddedRule]:
    """Revoke every rule of ours that sits on, references or names the departing cluster (idempotent)."""
    assert departure.federation
    ec2_for = lambda region: clients("ec2", region)  # noqa: E731
    assert departure.stack_id
    rules = ingress.rules_touching(ec2_for, config.regions_to_search(departure.region), departure.federation,
                                   departure.stack_id, departure.security_group_ids, config.deployment_id)
    revoked = ingress.revoke(ec2_for, rules)
    # Nodes that keep running (an opt-out) no longer carry the federation's group (a stack's own region only).
    ec2 = clients("ec2", departure.region)
    head = _head_instance(ec2, departure.stack_id)
    nodes = _departing_nodes(clients, departure)
    for instance in ([head] if head is not None and head["State"]["Name"] in STILL_UP else []) + nodes:
        ingress.detach_federation_groups(ec2, instance, departure.federation, config.deployment_id)
    return revoked


def shrink_federation_network(clients: ClientFactory, departure: Departure, remaining: list[Member],
                              config: Settings) -> dict[str, Any]:
    """Under the lease, once the remaining members are known: prefix lists hold only their subnets, and a VPC
    without a member loses the federation's group and prefix list (the last member leaving leaves nothing)."""
    assert departure.federation
    return ingress.shrink_network(lambda region: clients("ec2", region), config.regions_to_search(departure.region),
                                  departure.federation, remaining, config.deployment_id)


def remaining_members(clients: ClientFactory, departure: Departure,
                      config: Settings) -> tuple[list[Member], list[discovery.SkippedMember]]:
    """(members, skipped): the members that stay, live, tagged stacks the registry admits, without the departing
    one (by StackId: a same-named stack in another region stays), and the admitted stacks left out. A federation
    no longer declared has no member left."""
    assert departure.federation
    declared = registry.federation(clients("ssm", config.deployment_region), config, departure.federation)
    if declared is None:
        logger.warning("the federation is no longer declared in the registry: no member remains",
                       extra={"federation": departure.federation})
        return [], []
    stacks = discovery.federation_stacks(clients, config.regions_to_search(departure.region), declared, config)
    members, skipped = discovery.resolvable_members(  # a peer that does not resolve cannot block a departure
        clients, [(region, stack) for region, stack in stacks if stack["StackId"] != departure.stack_id],
        declared, config)
    return with_slurm_settings(clients, members), skipped


def with_slurm_settings(clients: ClientFactory, members: list[Member]) -> list[Member]:
    """The members with the Slurm settings their head nodes report now (discover-slurm.sh, read-only, all sent at
    once), so that ShrinkFederationNetwork counts their queues' subnets as the pairing's plan does. A head node that
    does not answer, or answers something invalid, leaves its member's settings unknown (None): the shrink then
    keeps only the subnets AWS shows for it, and a departure is never blocked by a peer."""
    sent: dict[str, node_commands.SentCommand] = {}
    for member in members:
        try:
            sent[member.stack_id] = node_commands.send_script(
                clients("ssm", member.region), [member.head_node.instance_id], "discover-slurm.sh", {},
                timeout_seconds=pairing.SETTINGS_READ_SECONDS,
                comment=f"slurm-multicluster: read Slurm settings of {member.cluster_name}")
        except (ClientError, NodeUnreachable) as error:
            logger.warning("cannot read a remaining member's Slurm settings",
                           extra={"cluster": member.cluster_name, "error": str(error)})
    read = []
    for member in members:
        settings = None
        if member.stack_id in sent:
            try:
                result = node_commands.collect(sent[member.stack_id])[member.head_node.instance_id]
                if result.ok:
                    settings = SlurmSettings.model_validate(result.result)
                else:
                    logger.warning("discover-slurm.sh failed on a remaining member",
                                   extra={"cluster": member.cluster_name, "error": result.result.get("error")})
            except (ClientError, NodeCommandFailed, NodeUnreachable, InvalidInput, ValidationError) as error:
                logger.warning("cannot read a remaining member's Slurm settings",
                               extra={"cluster": member.cluster_name, "error": str(error)[:300]})
        read.append(member.model_copy(update={"slurm": settings}))
    return read


def update_secret_access(clients: ClientFactory, departure: Departure, config: Settings) -> dict[str, Any]:
    """The munge key secret's readers recomputed as its current readers minus the departing head node's role:
    readers are only ever taken away here, and no other member needs to be discovered, so nothing else that fails
    leaves the departed cluster with read access (a member sharing that role loses it too). Its role unknown (its
    head node already gone), the readers that no admitted, tagged member's head node role accounts for go."""
    assert departure.federation
    declared = registry.federation(clients("ssm", config.deployment_region), config, departure.federation)
    if departure.head_role_arn:
        region, arn, why = discovery.federation_secret(clients, departure.federation, declared, config, departure.region)
        departing = [departure.head_role_arn]
    else:
        found = discovery.secret_readers(clients, departure.federation, declared, config, leaving=departure.stack_id,
                                         region=departure.region)
        region, arn, why, departing = found.region, found.secret_arn, found.reason, found.departed
    if arn is None:
        return {"secret": None, "readers": [], "reason": why}
    secrets = clients("secretsmanager", region)
    could_read = munge_secret.current_readers(secrets, arn)
    readers = munge_secret.revoke_readers(secrets, arn, departing, config.break_glass_role_arn)
    return {"secret": arn, "readers": readers, "revoked": sorted(set(departing) & set(could_read))}


# The cluster stays (only its federation tag went, or an admin unpaired it by hand): give it back its own accounting.
STAYING_TRIGGERS = {"tag-removed", "tag-added", "manual", "UPDATE_COMPLETE"}
# Events that may or may not be a departure: the tag removed through UpdateStack (UPDATE_COMPLETE), or its value
# changed to another federation or to anything invalid (tag-added): where our rules say it was paired decides.
OPT_OUT_TRIGGERS = {"UPDATE_COMPLETE", "tag-added"}
# Revoked by the registry: the cluster may be compromised, so nothing is run on it; the remaining members rotate.
REVOKED_TRIGGER = "revoked"
KEY_ADVICE = ("the departed cluster still holds the federation's munge key: rotate it (events/manual-rotate.json) "
              "so the departed cluster can no longer authenticate to the members")


def detach_departing(clients: ClientFactory, request: PairingRequest, departure: Departure, config: Settings) -> dict[str, Any]:
    """A departing cluster that keeps running goes back to its own slurmdbd (the one its pairing stopped)."""
    if request.trigger == REVOKED_TRIGGER:
        return {"action": "none", "keyAdvice": "", "reason": (
            "revoked by the registry: nothing is run on a cluster that may be compromised; the remaining members "
            "rotate to a key it never saw")}
    if request.trigger not in STAYING_TRIGGERS:
        return {"action": "none", "reason": "the stack is being deleted: its nodes go with it", "keyAdvice": ""}
    if departure.is_accounting:
        return {"action": "none", "reason": "the accounting cluster keeps its own slurmdbd", "keyAdvice": KEY_ADVICE}
    if departure.head_instance_id is None or departure.head_node_ip is None:
        return {"action": "none", "reason": "its head node is not running", "keyAdvice": KEY_ADVICE}
    own = pairing.head_slurm_settings(clients, departure.region, departure.head_instance_id, departure.cluster_name)
    if not own.slurmdbd_unit:
        return {"action": "left", "keyAdvice": KEY_ADVICE, "reason": (
            f"{departure.cluster_name} has no slurmdbd of its own: its slurmctld still names the federation's "
            "slurmdbd, which it can no longer reach; give it accounting of its own (Scheduling/SlurmSettings/"
            "Database) or set AccountingStorageType=accounting_storage/none")}
    results = node_commands.run_script_checked(
        clients("ssm", departure.region), [departure.head_instance_id], "set-accounting.sh",
        {"Host": departure.head_node_ip, "Port": str(own.dbd_port or 6819), "StartLocalSlurmdbd": True,
         "BackupId": request.execution_name},
        timeout_seconds=config.node_command_timeout_seconds,
        comment=f"slurm-multicluster: {departure.cluster_name} leaves: back to its own slurmdbd",
    )
    return {"action": "own accounting", "keyAdvice": KEY_ADVICE, **results[departure.head_instance_id].result}


def remove_from_accounting(clients: ClientFactory, request: PairingRequest, departure: Departure,
                           remaining: list[Member], config: Settings) -> dict[str, Any]:
    """Keep the departed cluster's history in accounting (default), or delete it from slurmdbd."""
    remove = request.remove_from_accounting if request.remove_from_accounting is not None else config.unpair_removes_accounting
    if departure.is_accounting:
        return {"action": "none", "reason": "the departing cluster is the accounting cluster"}
    if not remove:
        return {"action": "kept", "reason": "history kept: `sacct -M <cluster>` still shows its jobs "
                                            "(set UnpairRemovesAccounting or removeFromAccounting to delete it)"}
    accounting = [m for m in remaining if m.is_accounting]
    if len(accounting) != 1:
        raise PrerequisiteFailed(f"federation {departure.federation} has {len(accounting)} accounting clusters: "
                                 "cannot remove the departed cluster from accounting")
    head = pairing.read_slurm_settings(clients, accounting[0], config)
    assert head.slurm
    name = slurm_name_of(departure, head.slurm.control_hosts())
    if name is None:
        return {"action": "none", "reason": f"{departure.cluster_name} is not registered in the federation's accounting"}
    results = node_commands.run_script_checked(
        clients("ssm", head.region), [head.head_node.instance_id], "remove-from-accounting.sh",
        {"Cluster": name, "BackupId": request.execution_name},
        timeout_seconds=180,
        comment=f"slurm-multicluster: remove {name} from {head.cluster_name}'s accounting",
    )
    return {"action": "removed", "slurmClusterName": name, **results[head.head_node.instance_id].result}


def slurm_name_of(departure: Departure, control_hosts: dict[str, str]) -> str | None:
    """The departed cluster's ClusterName in accounting: the one registered from its head node's address, else
    its stack name (ParallelCluster's default ClusterName)."""
    if departure.head_node_ip:
        by_host = [name for name, host in control_hosts.items() if host == departure.head_node_ip]
        if len(by_host) == 1:
            return by_host[0]
    # slurmdbd keeps ClusterNames in lower case.
    by_name = [name for name in control_hosts if name.lower() == departure.cluster_name.lower()]
    return by_name[0] if by_name else None
