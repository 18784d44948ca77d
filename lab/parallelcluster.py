"""ParallelCluster-shaped resources in moto: the stack, its head node security group and tagged instances.

Mirrors what `pcluster create-cluster` leaves in an account (notes/parallelcluster.md): a top-level stack named
after the cluster with `parallelcluster:*` tags plus the user's tags, a `HeadNodeSecurityGroup` resource, a head
node instance and compute nodes tagged `parallelcluster:cluster-name` / `parallelcluster:node-type`, and with login
nodes (3.7+) a `LoginNodesSecurityGroup` (the logical id in ParallelCluster's cluster_stack.py
`_add_login_nodes_security_group`, one group for every pool without its own SecurityGroups) holding instances tagged
`parallelcluster:node-type=LoginNode` and `parallelcluster:login-nodes-pool-name`. Compute and login nodes are
launched from launch templates of the stack, as ParallelCluster's are: EC2 tags them `aws:ec2launchtemplate:id`.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from dataclasses import dataclass, field

import boto3

PCLUSTER_VERSION = "3.11.1"
AMI = "ami-12c6146b"  # one of moto's built-in images


@dataclass
class Network:
    """A VPC with one subnet, standing in for the clusters' network in one region."""

    region: str
    vpc_id: str
    subnet_id: str
    cidr: str


@dataclass
class ClusterInAws:
    """What a test or the demo needs to know about a cluster it created in moto."""

    name: str
    region: str
    stack_id: str
    security_group_id: str
    head_instance_id: str
    head_role_arn: str
    compute_instance_ids: list[str] = field(default_factory=list)
    login_instance_ids: list[str] = field(default_factory=list)
    login_security_group_id: str | None = None
    compute_launch_template_id: str | None = None  # the one its compute nodes launch from

    @property
    def instance_ids(self) -> list[str]:
        return [self.head_instance_id, *self.compute_instance_ids, *self.login_instance_ids]


def create_network(region: str, cidr: str) -> Network:
    """A VPC and subnet covering ``cidr`` (the lab's subnet, so instance IPs equal lab node IPs)."""
    ec2 = boto3.client("ec2", region_name=region)
    network = ipaddress.ip_network(cidr)
    vpc_cidr = str(network.supernet(new_prefix=16)) if network.prefixlen > 16 else cidr
    vpc_id = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr)["Subnet"]["SubnetId"]
    return Network(region, vpc_id, subnet_id, cidr)


def _instance_profile(region: str, cluster: str) -> tuple[str, str]:
    # IAM is global and CloudFormation suffixes the names it generates: same-named clusters in two regions differ.
    suffix = uuid.uuid4().hex[:12].upper()
    iam = boto3.client("iam", region_name=region)
    role = iam.create_role(RoleName=f"{cluster[:30]}-RoleHeadNode-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    iam.create_instance_profile(InstanceProfileName=f"{cluster[:30]}-HeadNodeProfile-{suffix}")
    iam.add_role_to_instance_profile(InstanceProfileName=f"{cluster[:30]}-HeadNodeProfile-{suffix}",
                                     RoleName=f"{cluster[:30]}-RoleHeadNode-{suffix}")
    return f"{cluster[:30]}-HeadNodeProfile-{suffix}", role


def _run(region: str, network: Network, ip: str, group: str, tags: dict[str, str], profile: str | None = None,
         launch_template: str | None = None) -> str:
    kwargs: dict = {"IamInstanceProfile": {"Name": profile}} if profile else {}
    if launch_template:  # EC2 then tags the instance aws:ec2launchtemplate:id (moto as AWS)
        kwargs["LaunchTemplate"] = {"LaunchTemplateId": launch_template}
    return boto3.client("ec2", region_name=region).run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="c6g.large", SubnetId=network.subnet_id,
        PrivateIpAddress=ip, SecurityGroupIds=[group],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        **kwargs,
    )["Instances"][0]["InstanceId"]


COMPUTE_LAUNCH_TEMPLATE = "LaunchTemplate9a1c0e5d2b7f4e83"
LOGIN_LAUNCH_TEMPLATE = "LoginNodeLaunchTemplate4f2b8d61c0a9e375"


def _stack_resource(cloudformation, stack: str, logical_id: str) -> str:
    return cloudformation.describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)[
        "StackResourceDetail"]["PhysicalResourceId"]


def create_cluster(
    network: Network,
    name: str,
    head_ip: str,
    compute_ips: list[str],
    tags: dict[str, str] | None = None,
    login_ips: list[str] | None = None,
    login_pool: str = "login",
    admit: str | None = "auto",
    deployment_id: str = "default",
    registry_region: str | None = None,
) -> ClusterInAws:
    """Create a ParallelCluster-shaped stack and its instances; ``tags`` are the user's cluster tags.

    ``admit``: what an administrator then writes in the registry: "accounting" (declare the federation with this
    cluster as its accounting cluster), "member" (admit it by its ARN), None (nothing: a tagged but not admitted
    cluster), or "auto" (from the tags: the lab's accounting marker, else member when tagged).
    """
    region = network.region
    cloudformation = boto3.client("cloudformation", region_name=region)
    template = {
        "Resources": {
            "HeadNodeSecurityGroup": {
                "Type": "AWS::EC2::SecurityGroup",
                "Properties": {"GroupDescription": "Enable access to the head node", "VpcId": network.vpc_id},
            }
        }
    }
    # The launch templates ParallelCluster's compute resources and login pools launch from (queues_stack.py
    # LaunchTemplate<hash>, login_nodes_stack.py LoginNodeLaunchTemplate<hash>). ParallelCluster keeps them in
    # nested stacks; here they sit in the cluster stack (moto's nested stacks lack ParentId, notes/moto.md).
    template["Resources"][COMPUTE_LAUNCH_TEMPLATE] = {
        "Type": "AWS::EC2::LaunchTemplate",
        "Properties": {"LaunchTemplateName": f"{name}-queue1-cr1", "LaunchTemplateData": {"ImageId": AMI}},
    }
    if login_ips:
        template["Resources"][LOGIN_LAUNCH_TEMPLATE] = {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateName": f"{name}-{login_pool}", "LaunchTemplateData": {"ImageId": AMI}},
        }
        template["Resources"]["LoginNodesSecurityGroup"] = {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {"GroupDescription": "Enable access to the login nodes", "VpcId": network.vpc_id},
        }
    stack_tags = {"parallelcluster:version": PCLUSTER_VERSION, "parallelcluster:cluster-name": name, **(tags or {})}
    stack_id = cloudformation.create_stack(
        StackName=name, TemplateBody=json.dumps(template),
        Tags=[{"Key": k, "Value": v} for k, v in stack_tags.items()],
    )["StackId"]
    group = _stack_resource(cloudformation, name, "HeadNodeSecurityGroup")
    profile, role_arn = _instance_profile(region, name)
    node_tags = {"parallelcluster:cluster-name": name, "parallelcluster:version": PCLUSTER_VERSION, **(tags or {})}
    # CloudFormation's own tags (the `aws:` prefix no user can set; moto lets the mirror set them as CloudFormation would).
    cloudformation_tags = {"aws:cloudformation:stack-id": stack_id, "aws:cloudformation:stack-name": name,
                           "aws:cloudformation:logical-id": "HeadNode"}
    head = _run(region, network, head_ip, group, {**node_tags, **cloudformation_tags,
                                                  "parallelcluster:node-type": "HeadNode", "Name": "HeadNode"}, profile)
    compute_template = _stack_resource(cloudformation, name, COMPUTE_LAUNCH_TEMPLATE)
    computes = [
        _run(region, network, ip, group, {**node_tags, "parallelcluster:node-type": "Compute", "Name": "Compute"},
             launch_template=compute_template)
        for ip in compute_ips
    ]
    login_group = logins = None
    if login_ips:
        login_group = _stack_resource(cloudformation, name, "LoginNodesSecurityGroup")
        logins = [
            _run(region, network, ip, login_group, {**node_tags, "parallelcluster:node-type": "LoginNode",
                                                    "parallelcluster:login-nodes-pool-name": login_pool,
                                                    "Name": "LoginNode"},
                 launch_template=_stack_resource(cloudformation, name, LOGIN_LAUNCH_TEMPLATE))
            for ip in login_ips
        ]
    cluster = ClusterInAws(name, region, stack_id, group, head, role_arn, computes, logins or [], login_group,
                           compute_template)
    if admit == "auto":
        federation = (tags or {}).get(FEDERATION_TAG)
        admit = None if federation is None else "accounting" if (tags or {}).get(LAB_ACCOUNTING_TAG) == "accounting" else "member"
    registry_region = registry_region or region  # the registry lives in the deployment's region
    if admit == "accounting":
        declare_federation(registry_region, (tags or {})[FEDERATION_TAG], stack_id, deployment_id=deployment_id)
    elif admit == "member":
        admit_cluster(registry_region, (tags or {})[FEDERATION_TAG], stack_id, deployment_id=deployment_id)
    return cluster


def launch_compute_node(cluster: ClusterInAws, ip: str) -> str:
    """A compute node ParallelCluster's resume program launched for a queue (in the head node's subnet and
    group, as create_cluster's); its instance id."""
    ec2 = boto3.client("ec2", region_name=cluster.region)
    head = ec2.describe_instances(InstanceIds=[cluster.head_instance_id])["Reservations"][0]["Instances"][0]
    network = Network(cluster.region, head["VpcId"], head["SubnetId"], "")
    tags = {"parallelcluster:cluster-name": cluster.name, "parallelcluster:version": PCLUSTER_VERSION,
            "parallelcluster:node-type": "Compute", "Name": "Compute"}
    instance_id = _run(cluster.region, network, ip, cluster.security_group_id, tags,
                       launch_template=cluster.compute_launch_template_id)
    cluster.compute_instance_ids.append(instance_id)
    return instance_id


def terminate_node(cluster: ClusterInAws, instance_id: str) -> None:
    """ParallelCluster scales a compute node down (idle past ScaledownIdletime, or a Spot interruption)."""
    boto3.client("ec2", region_name=cluster.region).terminate_instances(InstanceIds=[instance_id])
    cluster.compute_instance_ids.remove(instance_id)
    _release_private_ip(cluster.region, instance_id)


def _release_private_ip(region: str, instance_id: str) -> None:
    """EC2 frees a terminated instance's private IP, moto keeps it taken: free it, so that a node launched later
    can get the address again (moto runs in this process, in the tests and in the lab)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    instance = backend.get_instance(instance_id)
    backend.get_subnet(instance.subnet_id).del_subnet_ip(instance.private_ip)


# ---------------------------------------------------------------- the federation registry, as an administrator writes it
FEDERATION_TAG = "slurm-multicluster:federation"
# The product ignores this tag (the registry names the accounting cluster); the lab reads it as "declare this
# cluster as its federation's accounting cluster" when admit="auto", so a test's tags say what an admin admitted.
LAB_ACCOUNTING_TAG = "slurm-multicluster:role"


def registry_root(deployment_id: str = "default") -> str:
    return f"/slurm-multicluster/{deployment_id}/federations"


def declare_federation(region: str, federation: str, accounting_stack_id: str, *, deployment_id: str = "default",
                       **settings: object) -> str:
    """`aws ssm put-parameter` of the federation's declaration (README "Declare a federation"); its name."""
    name = f"{registry_root(deployment_id)}/{federation}/settings"
    boto3.client("ssm", region_name=region).put_parameter(
        Name=name, Type="String", Overwrite=True,
        Value=json.dumps({"accountingStackArn": accounting_stack_id, **settings}))
    return name


def member_parameter(federation: str, stack_id: str, deployment_id: str = "default") -> str:
    """The registry parameter that admits ``stack_id``: <root>/<federation>/members/<region>/<name>/<uuid>."""
    region, rest = stack_id.split(":")[3], stack_id.split(":stack/", 1)[1]
    return f"{registry_root(deployment_id)}/{federation}/members/{region}/{rest}"


def admit_cluster(region: str, federation: str, stack_id: str, *, deployment_id: str = "default") -> str:
    """`aws ssm put-parameter` admitting one stack by its ARN (README "Admit a cluster"); the parameter's name."""
    name = member_parameter(federation, stack_id, deployment_id)
    boto3.client("ssm", region_name=region).put_parameter(Name=name, Type="String", Value=stack_id, Overwrite=True)
    return name


def revoke_cluster(region: str, federation: str, stack_id: str, *, deployment_id: str = "default") -> str:
    """`aws ssm delete-parameter` of a member's admission (README "Revoke a cluster"); the parameter's name."""
    name = member_parameter(federation, stack_id, deployment_id)
    boto3.client("ssm", region_name=region).delete_parameter(Name=name)
    return name


def add_admission_rule(region: str, federation: str, rule: str, account: str, rule_region: str, pattern: str, *,
                       deployment_id: str = "default") -> str:
    """`aws ssm put-parameter` of an admission rule (README "Admit clusters created later")."""
    name = f"{registry_root(deployment_id)}/{federation}/admission-rules/{rule}"
    boto3.client("ssm", region_name=region).put_parameter(
        Name=name, Type="String", Overwrite=True,
        Value=json.dumps({"account": account, "region": rule_region, "stackNamePattern": pattern}))
    return name


def parameter_change_event(name: str, operation: str, region: str) -> dict:
    """A "Parameter Store Change" event exactly as EventBridge delivers it (AWS Systems Manager User Guide, "Parameter
    Store events"): what a registry write by an administrator sends to the workflows."""
    import time
    import uuid

    account = "123456789012"
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Parameter Store Change", "source": "aws.ssm",
        "account": account, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": region,
        "resources": [f"arn:aws:ssm:{region}:{account}:parameter{name}"],
        "detail": {"operation": operation, "name": name, "type": "String", "description": ""},
    }
