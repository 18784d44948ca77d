"""A compute or login node is an instance launched from a launch template of the cluster's stack (EC2's own
``aws:ec2launchtemplate:id`` tag), not any instance carrying ParallelCluster's tags: whoever can launch or tag an
instance can set ``parallelcluster:cluster-name`` and ``parallelcluster:node-type``, and would otherwise get its
subnet into the federation's prefix lists, its security group in rules to every head node's Slurm ports, the
federation group attached, and the product's node scripts run on it. Real pairing ASL in moto, nodes simulated."""

from __future__ import annotations

from typing import Iterator

import boto3
import pytest

from lab.parallelcluster import AMI
from slurm_multicluster import discovery
from workflow.federation_network import HOME, OTHER, ScaleFederation, federation_group, network_interface, scale_federation
from workflow.simulated_nodes import SimulatedNode

STRAY_CIDR = "10.240.9.0/24"  # a subnet of beta's VPC no node of any member uses


@pytest.fixture
def federation(aws_env: None) -> Iterator[ScaleFederation]:
    yield from scale_federation(aws_env)


def _stray(federation: ScaleFederation, node_type: str, ip: str, group: str, subnet: str,
           launch_template: str | None = None) -> str:
    """An instance someone launched with beta's ParallelCluster tags (and, if given, a launch template of theirs)."""
    ec2 = boto3.client("ec2", region_name=HOME)
    extra = {"LaunchTemplate": {"LaunchTemplateId": launch_template}} if launch_template else {}
    instance_id = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, SubnetId=subnet, PrivateIpAddress=ip, SecurityGroupIds=[group],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "parallelcluster:cluster-name", "Value": "beta"},
            {"Key": "parallelcluster:node-type", "Value": node_type},
            {"Key": "parallelcluster:version", "Value": "3.11.1"}]}], **extra,
    )["Instances"][0]["InstanceId"]
    # SSM would reach it (its agent runs): any script the product sent it would be recorded
    federation.nodes.add(SimulatedNode(f"stray-{node_type}-{ip}", "beta", "compute", instance_id,
                                       federation.federation_sha))
    return instance_id


def _rule_sources(region: str) -> set[str]:
    ec2 = boto3.client("ec2", region_name=region)
    rules = ec2.describe_security_group_rules(
        Filters=[{"Name": "tag-key", "Values": ["slurm-multicluster:federation"]}])["SecurityGroupRules"]
    return {r.get("ReferencedGroupInfo", {}).get("GroupId") or r.get("PrefixListId") or r.get("CidrIpv4", "")
            for r in rules}


def _prefix_list_cidrs(region: str) -> set[str]:
    ec2 = boto3.client("ec2", region_name=region)
    lists = [p for p in ec2.describe_managed_prefix_lists()["PrefixLists"] if p["OwnerId"] != "AWS"]
    return {e["Cidr"] for p in lists
            for e in ec2.get_managed_prefix_list_entries(PrefixListId=p["PrefixListId"])["Entries"]}


def test_instances_with_a_clusters_tags_but_not_its_launch_templates_get_nothing(federation):
    federation.create("alpha", HOME)
    federation.create("gamma", OTHER)
    beta = federation.create("beta", HOME)
    ec2 = boto3.client("ec2", region_name=HOME)
    vpc = federation.networks[HOME].vpc_id
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=STRAY_CIDR)["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="someones-instances", Description="not the cluster's",
                                      VpcId=vpc)["GroupId"]
    own_template = ec2.create_launch_template(LaunchTemplateName="someones-template",
                                              LaunchTemplateData={"ImageId": AMI})["LaunchTemplate"]["LaunchTemplateId"]
    strays = [_stray(federation, "Compute", "10.240.9.10", group, subnet),
              _stray(federation, "LoginNode", "10.240.9.11", group, subnet),
              _stray(federation, "Compute", "10.240.9.12", group, subnet, launch_template=own_template)]

    for name in ("alpha", "gamma", "beta"):
        result = federation.pair(name)
        assert result["status"] == "SUCCEEDED", (name, result.get("cause"))

    # discovery sees beta's own compute node, none of the strays
    found = discovery.cluster_nodes(ec2, boto3.client("cloudformation", region_name=HOME), "beta", beta.stack_id)
    assert [i["InstanceId"] for i in found] == beta.compute_instance_ids
    # no node script ran on them
    stray_names = {n.name for n in federation.nodes.nodes.values() if n.instance_id in strays}
    assert not [call for call in federation.nodes.calls if call[1] in stray_names]
    # their subnet is in no prefix list (beta's real nodes' subnet is: the check would see it), their group is the
    # source of no rule of ours, and they do not carry the federation group
    assert federation.networks[HOME].cidr in _prefix_list_cidrs(OTHER)
    assert STRAY_CIDR not in _prefix_list_cidrs(OTHER) | _prefix_list_cidrs(HOME)
    assert group not in _rule_sources(HOME) | _rule_sources(OTHER)
    federation_group_id = federation_group(HOME, vpc)
    assert federation_group_id
    for instance_id in strays:
        groups = ec2.describe_network_interfaces(NetworkInterfaceIds=[network_interface(HOME, instance_id)])
        assert [g["GroupId"] for g in groups["NetworkInterfaces"][0]["Groups"]] == [group]


def test_a_clusters_launch_templates_are_found_in_its_nested_stacks(aws_env):
    """ParallelCluster keeps them in nested stacks (ComputeFleet's queues stacks, the login nodes stack)."""
    import json

    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name=HOME)
        s3.create_bucket(Bucket="cluster-templates")
        queues = {"Resources": {"LaunchTemplate0123456789abcdef": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateName": "c-q1-cr1", "LaunchTemplateData": {"ImageId": AMI}}}}}
        s3.put_object(Bucket="cluster-templates", Key="queues.json", Body=json.dumps(queues))
        fleet = {"Resources": {"Queues": {"Type": "AWS::CloudFormation::Stack", "Properties": {
            "TemplateURL": "https://cluster-templates.s3.amazonaws.com/queues.json"}}}}
        s3.put_object(Bucket="cluster-templates", Key="fleet.json", Body=json.dumps(fleet))
        cluster = {"Resources": {"ComputeFleet": {"Type": "AWS::CloudFormation::Stack", "Properties": {
            "TemplateURL": "https://cluster-templates.s3.amazonaws.com/fleet.json"}}}}
        cloudformation = boto3.client("cloudformation", region_name=HOME)
        stack_id = cloudformation.create_stack(StackName="c", TemplateBody=json.dumps(cluster))["StackId"]
        template = boto3.client("ec2", region_name=HOME).describe_launch_templates(
            LaunchTemplateNames=["c-q1-cr1"])["LaunchTemplates"][0]["LaunchTemplateId"]

        assert discovery.stack_launch_templates(cloudformation, stack_id) == {template}


def test_a_queue_with_no_node_running_is_a_source_through_its_launch_template(federation):
    """pcluster update-cluster added a queue in another subnet (its launch template names it, as ParallelCluster's
    queues_stack.py does with the queue's first subnet); no node of it runs yet. Its first node must reach the
    peers as soon as it boots, not after the next pairing or sweep: its subnet is in the prefix lists already."""
    federation.create("alpha", HOME)
    federation.create("gamma", OTHER)
    beta = federation.create("beta", HOME)
    ec2 = boto3.client("ec2", region_name=HOME)
    queue_subnet = ec2.create_subnet(VpcId=federation.networks[HOME].vpc_id, CidrBlock=STRAY_CIDR)["Subnet"]["SubnetId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=beta.compute_launch_template_id, SourceVersion="1",
        LaunchTemplateData={"NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": queue_subnet,
                                                   "Groups": [beta.security_group_id]}]})

    for name in ("alpha", "gamma", "beta"):
        result = federation.pair(name)
        assert result["status"] == "SUCCEEDED", (name, result.get("cause"))

    assert {federation.networks[HOME].cidr, STRAY_CIDR} <= _prefix_list_cidrs(OTHER)
