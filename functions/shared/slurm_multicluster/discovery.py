"""Find a ParallelCluster cluster's head node, compute nodes and federation peers from AWS APIs."""

from __future__ import annotations

from typing import Any, Callable

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, PrerequisiteFailed
from slurm_multicluster.models import HeadNode, Member
from slurm_multicluster.registry import Federation
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

CLUSTER_NAME_TAG = "parallelcluster:cluster-name"
NODE_TYPE_TAG = "parallelcluster:node-type"
VERSION_TAG = "parallelcluster:version"

ClientFactory = Callable[[str, str], Any]  # (service, region) -> boto3 client


def tags_of(stack: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in stack.get("Tags", [])}


def describe_stack(cloudformation: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, or None when it does not exist."""
    try:
        return cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in error.response["Error"].get("Message", ""):
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
        role_arn=_instance_role_arn(iam, instance),
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


def _instance_role_arn(iam: Any, instance: dict[str, Any]) -> str | None:
    profile_arn = instance.get("IamInstanceProfile", {}).get("Arn")
    if not profile_arn:
        return None
    profile_name = profile_arn.rsplit("/", 1)[-1]
    roles = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"]
    return roles[0]["Arn"] if roles else None


def node_instance_ids(ec2: Any, cluster_name: str, node_type: str) -> list[str]:
    """Running instances of one ParallelCluster node type (Compute, LoginNode) of a cluster."""
    return sorted(i["InstanceId"] for i in instances(ec2, cluster_filters(cluster_name, node_type)))


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


def node_sources(ec2: Any, cloudformation: Any, cluster_name: str, stack_id: str) -> tuple[list[str], list[list[str]]]:
    """(subnet CIDRs, distinct security group sets) of a cluster's running login and compute nodes: where its
    users' submissions to a peer come from. In each set the groups its stack created come first (a group shared
    with hosts outside the cluster is the last choice as a rule's source)."""
    nodes = [i for node_type in ("LoginNode", "Compute") for i in instances(ec2, cluster_filters(cluster_name, node_type))]
    cidrs = sorted(set(subnet_cidrs(ec2, [i["SubnetId"] for i in nodes if i.get("SubnetId")])))
    owned = set(stack_security_groups(cloudformation, stack_id)) if nodes else set()
    # The groups of its network interfaces: what its traffic carries (a queue's AdditionalSecurityGroups included).
    group_sets = {tuple(sorted({v.require(v.SECURITY_GROUP_ID, g["GroupId"], "security group id")
                                for eni in i.get("NetworkInterfaces", []) for g in eni.get("Groups", [])},
                               key=lambda g: (g not in owned, g)))
                  for i in nodes}
    return cidrs, [list(groups) for groups in sorted(group_sets) if groups]


def member(clients: ClientFactory, stack: dict[str, Any], region: str, federation: Federation, config: Settings) -> Member:
    """Describe one admitted member cluster from its stack; the registry says whether it is the accounting one."""
    name = v.require(v.CLUSTER_NAME, stack["StackName"], "cluster name")
    stack_id = v.require(v.STACK_ARN, stack["StackId"], "stack ARN")
    ec2 = clients("ec2", region)
    node_cidrs, node_groups = node_sources(ec2, clients("cloudformation", region), name, stack_id)
    return Member(
        cluster_name=name,
        stack_id=stack_id,
        region=region,
        federation=federation.name,
        is_accounting=federation.is_accounting(stack_id),
        head_node=head_node(ec2, clients("iam", region), clients("cloudformation", region), name, stack_id),
        compute_instance_ids=node_instance_ids(ec2, name, "Compute"),
        login_instance_ids=node_instance_ids(ec2, name, "LoginNode"),
        node_subnet_cidrs=node_cidrs,
        node_security_group_sets=node_groups,
    )


def resolvable_members(clients: ClientFactory, stacks: list[tuple[str, dict[str, Any]]], federation: Federation,
                       config: Settings, required: str | None = None) -> tuple[list[Member], list[str]]:
    """(members, skipped): every stack that resolves to a member, and "<stack>: <why>" for each that does not (no
    running head node created by its stack, ...). An unresolvable peer never halts the others; the stack the
    workflow is about (``required``, a StackId) still fails loudly."""
    members, skipped = [], []
    for region, stack in stacks:
        try:
            members.append(member(clients, stack, region, federation, config))
        except PrerequisiteFailed as error:
            if stack["StackId"] == required:
                raise
            logger.warning("skipping a member that does not resolve", extra={"stack": stack["StackId"],
                                                                              "reason": str(error)})
            skipped.append(f"{stack['StackName']} ({stack['StackId']}): {error}")
    return members, skipped


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
