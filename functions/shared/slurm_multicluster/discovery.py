"""Find a ParallelCluster cluster's head node, compute nodes and federation peers from AWS APIs."""

from __future__ import annotations

from typing import Any, Callable

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from slurm_multicluster import announcements, munge_secret, node_commands
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, NodeUnreachable, PrerequisiteFailed
from slurm_multicluster.models import HeadNode, Member, StateModel
from slurm_multicluster.node_commands import SSM_POLICY_HINT, NodeResult
from slurm_multicluster.registry import Federation
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

CLUSTER_NAME_TAG = "parallelcluster:cluster-name"
NODE_TYPE_TAG = "parallelcluster:node-type"
VERSION_TAG = "parallelcluster:version"

ClientFactory = Callable[[str, str], Any]  # (service, region) -> boto3 client


def tags_of(stack: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in stack.get("Tags", [])}


def stack_missing(error: ClientError) -> bool:
    """Is this CloudFormation's answer for a stack it does not know ("Stack with id X does not exist", a
    ValidationError code shared with other refusals, so the message decides)?"""
    return "does not exist" in error.response["Error"].get("Message", "")


def describe_stack(cloudformation: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, or None when it does not exist."""
    try:
        return cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as error:
        if stack_missing(error):
            return None
        raise


def membership(stack: dict[str, Any], config: Settings) -> tuple[str | None, str]:
    """(federation name, reason) for a stack: the federation when it is a top-level ParallelCluster stack
    carrying the federation tag, else None and why it is not a member."""
    tags = tags_of(stack)
    if stack.get("ParentId") or stack.get("RootId"):
        return None, "nested stack (ParallelCluster queue or login node stack), not a cluster"
    if VERSION_TAG not in tags:
        return None, "not a ParallelCluster stack (no parallelcluster:version tag)"
    if not v.CLUSTER_NAME.fullmatch(stack.get("StackName", "")):
        return None, "not a ParallelCluster cluster: its stack name is longer than ParallelCluster's 60 characters"
    federation = tags.get(config.federation_tag_key)
    if federation is None:
        return None, f"no {config.federation_tag_key} tag: the cluster has not opted in"
    v.require(v.FEDERATION_NAME, federation, f"{config.federation_tag_key} tag value")
    return federation, "tagged member"


def instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    paginator = ec2.get_paginator("describe_instances")
    return [
        instance
        for page in paginator.paginate(Filters=filters)
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


def cluster_filters(cluster_name: str, node_type: str, states: tuple[str, ...] = ("running",)) -> list[dict[str, Any]]:
    """DescribeInstances filters for one ParallelCluster node type of a cluster, in the given states."""
    return [
        {"Name": f"tag:{CLUSTER_NAME_TAG}", "Values": [cluster_name]},
        {"Name": f"tag:{NODE_TYPE_TAG}", "Values": [node_type]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]


# CloudFormation's own tags on the instances it creates: the `aws:` prefix is reserved, no user can set or change
# them. ParallelCluster's head node is the AWS::EC2::Instance "HeadNode" of the cluster stack (cluster_stack.py).
STACK_ID_TAG = "aws:cloudformation:stack-id"
LOGICAL_ID_TAG = "aws:cloudformation:logical-id"
HEAD_NODE_LOGICAL_ID = "HeadNode"


def head_node_filters(stack_id: str, states: tuple[str, ...] = ("running",)) -> list[dict[str, Any]]:
    """DescribeInstances filters for the head node of the stack ``stack_id``, by CloudFormation's tags only:
    an instance that merely carries ``parallelcluster:*`` tags (anyone can set those) never matches."""
    return [
        {"Name": f"tag:{STACK_ID_TAG}", "Values": [v.require(v.STACK_ARN, stack_id, "stack ARN")]},
        {"Name": f"tag:{LOGICAL_ID_TAG}", "Values": [HEAD_NODE_LOGICAL_ID]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]


def head_node(ec2: Any, iam: Any, cloudformation: Any, cluster_name: str, stack_id: str) -> HeadNode:
    """The running head node of a cluster (found by CloudFormation's tags), with its security groups and role."""
    found = instances(ec2, head_node_filters(stack_id))
    if len(found) != 1:
        raise PrerequisiteFailed(
            f"cluster {cluster_name}: expected one running head node created by its stack ({LOGICAL_ID_TAG}="
            f"{HEAD_NODE_LOGICAL_ID}, {STACK_ID_TAG}={stack_id}), found {len(found)}"
        )
    instance = found[0]
    group_ids = [group["GroupId"] for group in instance.get("SecurityGroups", [])]
    head_group = _stack_resource_id(cloudformation, stack_id, "HeadNodeSecurityGroup")
    if head_group in group_ids:  # ParallelCluster's own group first: our rules go on it
        group_ids.remove(head_group)
        group_ids.insert(0, head_group)
    primary = [eni for eni in instance.get("NetworkInterfaces", []) if eni.get("Attachment", {}).get("DeviceIndex") == 0]
    return HeadNode(
        instance_id=v.require(v.INSTANCE_ID, instance["InstanceId"], "instance id"),
        private_ip=v.ipv4(instance["PrivateIpAddress"]),
        security_group_ids=[v.require(v.SECURITY_GROUP_ID, g, "security group id") for g in group_ids],
        vpc_id=instance["VpcId"],
        role_arn=instance_role_arn(iam, instance),
        network_interface_id=primary[0]["NetworkInterfaceId"] if primary else None,
        subnet_cidr=subnet_cidrs(ec2, [instance["SubnetId"]])[0] if instance.get("SubnetId") else None,
    )


def subnet_cidrs(ec2: Any, subnet_ids: list[str]) -> list[str]:
    """The IPv4 CIDRs of ``subnet_ids``, in their order (validated: they become security group sources)."""
    if not subnet_ids:
        return []
    unique = sorted(set(subnet_ids))
    cidr_of = {s["SubnetId"]: v.ipv4_cidr(s["CidrBlock"]) for s in ec2.describe_subnets(SubnetIds=unique)["Subnets"]}
    return [cidr_of[s] for s in subnet_ids]


def _stack_resource_id(cloudformation: Any, stack: str, logical_id: str) -> str | None:
    try:
        resource = cloudformation.describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)
    except ClientError:
        return None
    return resource["StackResourceDetail"].get("PhysicalResourceId")


def instance_role_arn(iam: Any, instance: dict[str, Any]) -> str | None:
    """The role of an instance's instance profile; None without one, or once its profile was deleted."""
    profile_arn = instance.get("IamInstanceProfile", {}).get("Arn")
    if not profile_arn:
        return None
    profile_name = profile_arn.rsplit("/", 1)[-1]
    try:
        roles = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "NoSuchEntity":  # a stack deletion removes the profile
            return None
        raise
    return roles[0]["Arn"] if roles else None


# EC2's own tag on every instance launched from a launch template (EC2 User Guide, "Launch EC2 instances using a
# launch template"): the `aws:` prefix is reserved, no user can set or change it.
LAUNCH_TEMPLATE_TAG = "aws:ec2launchtemplate:id"
HEAD_NODE_LAUNCH_TEMPLATE = "HeadNodeLaunchTemplate"
NESTED_STACK_DEPTH = 3  # ParallelCluster: cluster stack -> ComputeFleet queues stacks, login nodes stack


def stack_launch_templates(cloudformation: Any, stack_id: str) -> set[str]:
    """The launch templates of the stack and of its nested stacks. ParallelCluster creates one per compute
    resource in its queues stacks (queues_stack.py, ``LaunchTemplate<hash>``, used by the head node's resume
    program through CreateFleet/RunInstances) and one per login node pool in its login nodes stack
    (login_nodes_stack.py, ``LoginNodeLaunchTemplate<hash>``, used by the pool's Auto Scaling group). The head
    node's (cluster_stack.py ``HeadNodeLaunchTemplate``) is not a node's: the head node is found by its own tags."""
    found: set[str] = set()
    stacks, seen = [v.require(v.STACK_ARN, stack_id, "stack ARN")], set()
    for _ in range(NESTED_STACK_DEPTH):
        nested = []
        for stack in stacks:
            seen.add(stack)
            for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
                for resource in page["StackResourceSummaries"]:
                    physical = resource.get("PhysicalResourceId") or ""
                    if (resource["ResourceType"] == "AWS::EC2::LaunchTemplate" and v.LAUNCH_TEMPLATE_ID.fullmatch(physical)
                            and resource["LogicalResourceId"] != HEAD_NODE_LAUNCH_TEMPLATE):
                        found.add(physical)
                    # AWS names a nested stack by its ARN (moto by its name, notes/moto.md)
                    elif resource["ResourceType"] == "AWS::CloudFormation::Stack" and physical not in seen and (
                            v.STACK_ARN.fullmatch(physical) or v.STACK_NAME.fullmatch(physical)):
                        nested.append(physical)
        stacks = nested
    return found


def cluster_nodes(ec2: Any, cloudformation: Any, cluster_name: str, stack_id: str,
                  node_types: tuple[str, ...] = ("Compute", "LoginNode"),
                  states: tuple[str, ...] = ("running",), templates: set[str] | None = None) -> list[dict[str, Any]]:
    """The cluster's compute and login node instances: tagged ``parallelcluster:cluster-name`` and
    ``parallelcluster:node-type`` (which anyone who can tag an instance can set) AND launched from one of the
    launch templates of the cluster's stack (EC2's ``aws:ec2launchtemplate:id``, which no one can set). An
    instance with the tags only gets nothing from us: no federation group, no node script, no prefix-list entry."""
    tagged = [i for node_type in node_types for i in instances(ec2, cluster_filters(cluster_name, node_type, states))]
    if not tagged:
        return []
    templates = stack_launch_templates(cloudformation, stack_id) if templates is None else templates
    nodes = []
    for instance in tagged:
        template = tags_of(instance).get(LAUNCH_TEMPLATE_TAG)
        if template in templates:
            nodes.append(instance)
        else:
            logger.warning("instance carries the cluster's node tags but was not launched from a launch template "
                           "of its stack: ignored", extra={"cluster": cluster_name, "instanceId": instance["InstanceId"],
                                                          "launchTemplate": template})
    return nodes


FLEET_NODE_TYPES = ("Compute", "LoginNode")


def fleet(clients: ClientFactory, member: Member) -> dict[str, float]:
    """The member's running compute and login nodes as they are now (ParallelCluster launches and terminates
    them all the time; cluster_nodes): instance id -> launch time (epoch seconds)."""
    nodes = cluster_nodes(clients("ec2", member.region), clients("cloudformation", member.region),
                          member.cluster_name, member.stack_id, FLEET_NODE_TYPES)
    return {i["InstanceId"]: i["LaunchTime"].timestamp() for i in nodes}


def stack_security_groups(cloudformation: Any, stack: str) -> list[str]:
    """Every security group the stack created (ParallelCluster: head node, compute, login node groups)."""
    paginator = cloudformation.get_paginator("list_stack_resources")
    return [
        resource["PhysicalResourceId"]
        for page in paginator.paginate(StackName=stack)
        for resource in page["StackResourceSummaries"]
        if resource["ResourceType"] == "AWS::EC2::SecurityGroup"
        and v.SECURITY_GROUP_ID.fullmatch(resource.get("PhysicalResourceId") or "")
    ]


def launch_template_interfaces(ec2: Any, templates: set[str]) -> list[dict[str, Any]]:
    """The network interfaces of the latest version of each launch template (the version ParallelCluster's resume
    program and the login pools' Auto Scaling groups launch): each names the queue's or pool's first subnet and
    its security groups, whether or not a node of it runs now."""
    interfaces = []
    for template in sorted(templates):
        versions = ec2.describe_launch_template_versions(LaunchTemplateId=template, Versions=["$Latest"])
        for version in versions["LaunchTemplateVersions"]:
            interfaces.extend(version.get("LaunchTemplateData", {}).get("NetworkInterfaces", []))
    return interfaces


def node_sources(cloudformation: Any, ec2: Any, stack_id: str, nodes: list[dict[str, Any]],
                 templates: set[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(subnet CIDRs, distinct security group sets) of a cluster's login and compute nodes: where its users'
    submissions to a peer come from. From its running nodes (cluster_nodes: every subnet a multi-subnet queue
    uses) and from its launch templates (a queue or pool with no node running yet: its first subnet and its
    groups). In each set the groups its stack created come first (a group shared with hosts outside the cluster is
    the last choice as a rule's source)."""
    interfaces = launch_template_interfaces(ec2, templates or set())
    subnets = [i["SubnetId"] for i in nodes if i.get("SubnetId")] + [
        n["SubnetId"] for n in interfaces if n.get("SubnetId")]
    cidrs = sorted(set(subnet_cidrs(ec2, subnets)))
    owned = set(stack_security_groups(cloudformation, stack_id)) if nodes or interfaces else set()
    # The groups of its network interfaces: what its traffic carries (a queue's AdditionalSecurityGroups included).
    group_sets = {_ordered({g["GroupId"] for eni in i.get("NetworkInterfaces", []) for g in eni.get("Groups", [])},
                           owned) for i in nodes}
    group_sets |= {_ordered(set(n.get("Groups", [])), owned) for n in interfaces}
    return cidrs, [list(groups) for groups in sorted(group_sets) if groups]


def _ordered(groups: set[str], owned: set[str]) -> tuple[str, ...]:
    return tuple(sorted((v.require(v.SECURITY_GROUP_ID, g, "security group id") for g in groups),
                        key=lambda g: (g not in owned, g)))


def member(clients: ClientFactory, stack: dict[str, Any], region: str, federation: Federation, config: Settings) -> Member:
    """Describe one admitted member cluster from its stack; the registry says whether it is the accounting one."""
    name = v.require(v.CLUSTER_NAME, stack["StackName"], "cluster name")
    stack_id = v.require(v.STACK_ARN, stack["StackId"], "stack ARN")
    ec2, cloudformation = clients("ec2", region), clients("cloudformation", region)
    templates = stack_launch_templates(cloudformation, stack_id)
    nodes = cluster_nodes(ec2, cloudformation, name, stack_id, templates=templates)
    node_cidrs, node_groups = node_sources(cloudformation, ec2, stack_id, nodes, templates)

    def of_type(node_type: str) -> list[str]:
        return sorted(i["InstanceId"] for i in nodes
                      if tags_of(i).get(NODE_TYPE_TAG) == node_type)

    return Member(
        cluster_name=name,
        stack_id=stack_id,
        region=region,
        federation=federation.name,
        is_accounting=federation.is_accounting(stack_id),
        head_node=head_node(ec2, clients("iam", region), cloudformation, name, stack_id),
        compute_instance_ids=of_type("Compute"),
        login_instance_ids=of_type("LoginNode"),
        node_subnet_cidrs=node_cidrs,
        node_security_group_sets=node_groups,
    )


class SkippedMember(StateModel):
    """An admitted stack of the federation left out of this run, and why: it never halts the others."""

    cluster_name: str
    stack_id: str
    region: str
    reason: str
    head_role_arn: str = ""  # its head node's role when it has one (it keeps the secret access it has)


SSM_ONLINE = "Online"
SSM_FILTER_VALUES = 50  # DescribeInstanceInformation: instance ids per InstanceIds filter, at most


def ssm_online(ssm: Any, instance_ids: list[str]) -> set[str]:
    """The instances whose SSM agent is registered and Online (DescribeInstanceInformation): the only ones Run
    Command reaches. An instance without the agent or the AmazonSSMManagedInstanceCore policy is not listed."""
    online: set[str] = set()
    paginator = ssm.get_paginator("describe_instance_information")
    for start in range(0, len(instance_ids), SSM_FILTER_VALUES):
        batch = instance_ids[start:start + SSM_FILTER_VALUES]
        for page in paginator.paginate(Filters=[{"Key": "InstanceIds", "Values": batch}]):
            online |= {i["InstanceId"] for i in page["InstanceInformationList"] if i.get("PingStatus") == SSM_ONLINE}
    return online


def node_keys(ssm: Any, ec2: Any, cluster_name: str, instance_ids: list[str]) -> dict[str, NodeResult]:
    """Which munge key each of a cluster's ``instance_ids`` runs, as the node itself reports it (report-munge-key.sh,
    read-only: a fingerprint, never the key); a node shut down before or while it answers comes back ``gone``."""
    return node_commands.run_script(ssm, instance_ids, "report-munge-key.sh", {}, timeout_seconds=120,
                                    comment=f"slurm-multicluster: which munge key {cluster_name}'s nodes run",
                                    gone_check=node_commands.fleet_check(ec2))


def not_on_key(results: dict[str, NodeResult], sha256: str) -> list[str]:
    """The nodes of ``results`` (node_keys) that are not gone and do not say they run the key ``sha256``; a node
    that could not say counts as not on it."""
    return sorted(i for i, r in results.items() if not r.gone and (not r.ok or r.result.get("mungeKeySha256") != sha256))


def claimed_cluster_names(stacks: list[tuple[str, dict[str, Any]]], federation: str) -> dict[str, str]:
    """StackId -> why, for every stack whose ClusterName another stack of the list claims too. ParallelCluster's
    Slurm ClusterName is the cluster (stack) name and slurmdbd keeps it in lower case: two admitted stacks of the
    same name (in two regions, or re-created) would be one cluster to Slurm, so neither joins."""
    by_name: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for region, stack in stacks:
        by_name.setdefault(stack["StackName"].lower(), []).append((region, stack))
    claimed = {}
    for name, claimants in by_name.items():
        if len(claimants) < 2:
            continue
        stack_ids = ", ".join(stack["StackId"] for _, stack in claimants)
        why = (f"ClusterName {name} is claimed by {len(claimants)} admitted stacks of federation {federation} "
               f"({stack_ids}): Slurm would take them for one cluster, so none of them joins until only one is "
               "left (revoke the others in the registry, or delete them)")
        claimed.update({stack["StackId"]: why for _, stack in claimants})
    return claimed


def resolvable_members(clients: ClientFactory, stacks: list[tuple[str, dict[str, Any]]], federation: Federation,
                       config: Settings, required: str | None = None) -> tuple[list[Member], list[SkippedMember]]:
    """(members, skipped): every stack that resolves to a member SSM can reach, and each that does not, with why:
    its ClusterName claimed by another admitted stack too, no running head node created by its stack, a head
    node whose SSM agent is not Online. An unresolvable peer never halts the others; the stack the workflow is
    about (``required``, a StackId) still fails loudly (PrerequisiteFailed, or NodeUnreachable for SSM)."""
    members: list[Member] = []
    skipped: list[SkippedMember] = []

    def skip(region: str, stack: dict[str, Any], reason: str, error: type[Exception] = PrerequisiteFailed,
             head_role_arn: str | None = None) -> None:
        if stack["StackId"] == required:
            raise error(reason)
        logger.warning("skipping a member that does not resolve", extra={"stack": stack["StackId"], "reason": reason})
        skipped.append(SkippedMember(cluster_name=stack["StackName"], stack_id=stack["StackId"], region=region,
                                     reason=reason, head_role_arn=head_role_arn or ""))

    claimed = claimed_cluster_names(stacks, federation.name)
    for region, stack in stacks:
        if stack["StackId"] in claimed:
            skip(region, stack, claimed[stack["StackId"]])
            continue
        try:
            members.append(member(clients, stack, region, federation, config))
        except PrerequisiteFailed as error:
            skip(region, stack, str(error))
    reachable = []
    for region in sorted({m.region for m in members}):
        in_region = [m for m in members if m.region == region]
        online = ssm_online(clients("ssm", region), [m.head_node.instance_id for m in in_region])
        for found in in_region:
            if found.head_node.instance_id in online:
                reachable.append(found)
                continue
            skip(region, {"StackName": found.cluster_name, "StackId": found.stack_id},
                 f"cluster {found.cluster_name}: its head node {found.head_node.instance_id} is not managed by SSM "
                 f"(not registered, or its agent is not Online in Systems Manager): {SSM_POLICY_HINT}",
                 NodeUnreachable, found.head_node.role_arn)
    return [m for m in members if m in reachable], skipped


SKIPPED_DETAIL_TYPE = "Slurm Cluster Skipped"
SKIPPED_METRIC = "MembersSkipped"


def announce_skipped(events: Any, bus: str, federation: str | None, skipped: list[SkippedMember], workflow: str,
                     execution: str) -> None:
    """One "Slurm Cluster Skipped" event per skipped stack (stackId, reason) and the MembersSkipped metric, so an
    administrator hears of a member left out of a pairing, rotation or unpairing. Nothing when none was skipped."""
    if not skipped:
        return
    metrics = Metrics()  # namespace and service from POWERTOOLS_METRICS_NAMESPACE / POWERTOOLS_SERVICE_NAME, now
    metrics.add_metric(name=SKIPPED_METRIC, unit=MetricUnit.Count, value=len(skipped))
    metrics.add_metadata(key="stacks", value=[s.stack_id for s in skipped])
    metrics.flush_metrics()  # only then: most discoveries skip nothing (no empty-metrics warning)
    try:
        announcements.publish(events, bus, SKIPPED_DETAIL_TYPE, [
            {"federation": federation, "cluster": s.cluster_name, "stackId": s.stack_id, "region": s.region,
             "reason": s.reason, "workflow": workflow, "execution": execution, "outcome": "skipped"}
            for s in skipped])
    except Exception:  # the skip is in the metric and the step's output: losing its event must not halt the others
        logger.exception("could not announce the skipped members", extra={"stacks": [s.stack_id for s in skipped]})


LIVE_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "UPDATE_IN_PROGRESS",
                 "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"}


def live_stacks(clients: ClientFactory, regions: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(region, stack) of every live stack (created or updated, not being deleted) in ``regions``."""
    return [
        (region, stack)
        for region in regions
        for page in clients("cloudformation", region).get_paginator("describe_stacks").paginate()
        for stack in page["Stacks"]
        if stack["StackStatus"] in LIVE_STATUSES
    ]


def federation_stacks(clients: ClientFactory, regions: list[str], federation: Federation,
                      config: Settings) -> list[tuple[str, dict[str, Any]]]:
    """(region, stack) of every live top-level ParallelCluster stack that asks to join ``federation`` (its tag)
    and that the registry admits; tagged stacks nobody admitted are logged and left out."""
    found = []
    for region, stack in live_stacks(clients, regions):
        try:
            name, _ = membership(stack, config)
        except InvalidInput:
            logger.warning("ignoring stack with an invalid federation tag", extra={"stack": stack["StackName"]})
            continue
        if name != federation.name:
            continue
        if federation.admission(stack["StackId"]) is None:
            logger.warning("ignoring a tagged stack the registry does not admit",
                           extra={"stack": stack["StackId"], "federation": federation.name})
            continue
        found.append((region, stack))
    return found


NOT_TERMINATED = ("pending", "running", "stopping", "stopped", "shutting-down")


def head_node_roles(clients: ClientFactory, stacks: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """The head node roles of ``stacks`` (their head nodes in any state but terminated: a stopped head node still
    needs its key): the secret readers these clusters account for."""
    roles = set()
    for region, stack in stacks:
        for instance in instances(clients("ec2", region), head_node_filters(stack["StackId"], NOT_TERMINATED)):
            role = instance_role_arn(clients("iam", region), instance)
            if role:
                roles.add(role)
    return roles


class SecretReaders(StateModel):
    """Who may read a federation's munge key secret, and which of those roles no member accounts for."""

    federation: str
    secret_arn: str | None = None
    region: str
    readers: list[str] = []
    departed: list[str] = []  # readers that are the head node role of no admitted, tagged, live member
    reason: str = ""


def federation_secret(clients: ClientFactory, name: str, federation: Federation | None, config: Settings,
                      region: str | None = None) -> tuple[str, str | None, str]:
    """(region, ARN or None, why not) of federation ``name``'s secret, in its accounting cluster's region (else
    ``region``): None with the reason when it does not exist or this deployment did not create it."""
    match = v.STACK_ARN.fullmatch(federation.declaration.accounting_stack_arn) if federation else None
    where = match["region"] if match else region or config.deployment_region
    secret_name = config.munge_key_secret_name(name)
    described = munge_secret.describe(clients("secretsmanager", where), secret_name)
    if described is None:
        return where, None, f"no secret {secret_name} in {where}"
    foreign = munge_secret.foreign_reason(described, config)
    if foreign:  # the pairing refuses such a secret: it never held the key, and it is not ours to change
        return where, None, f"{described['ARN']} left alone, not created by this deployment: {foreign}"
    return where, described["ARN"], ""


def secret_readers(clients: ClientFactory, name: str, federation: Federation | None, config: Settings,
                   leaving: str | None = None, region: str | None = None) -> SecretReaders:
    """The readers of federation ``name``'s secret, and the departed ones: no admitted, tagged, live stack of the
    federation but ``leaving`` (a StackId) has that head node role. A federation the registry no longer declares
    has no member: every reader departed. Reads only."""
    where, arn, why = federation_secret(clients, name, federation, config, region)
    if arn is None:
        return SecretReaders(federation=name, region=where, reason=why)
    readers = munge_secret.current_readers(clients("secretsmanager", where), arn)
    staying: set[str] = set()
    if federation is not None:
        stacks = federation_stacks(clients, config.regions_to_search(where), federation, config)
        staying = head_node_roles(clients, [(r, s) for r, s in stacks if s["StackId"] != leaving])
    return SecretReaders(federation=name, region=where, secret_arn=arn, readers=readers,
                         departed=[role for role in readers if role not in staying])
