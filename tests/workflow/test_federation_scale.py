"""The federation's network at scale (issue 10), through the real pairing and unpairing ASL in moto: rules per
head node group stay within the default quota of 60 (a prefix list counted as its MaxEntries) and security
groups per ENI within 5, whatever the number of members, in two regions; the plan refuses a pairing that would
exceed a quota before anything changes; the last member leaving leaves nothing of ours behind."""

from __future__ import annotations

import os
from typing import Iterator

import boto3
import pytest

from lab import cloud
from lab.parallelcluster import create_network
from slurm_multicluster import ingress, limits
from workflow.federation_network import (HOME, OTHER, ScaleFederation, federation_group, groups_per_eni,
                                         head_group_rules, network_interface, scale_federation)

RULES_QUOTA, GROUPS_PER_ENI_QUOTA = 60, 5
SIZE = int(os.environ.get("FEDERATION_SCALE_MEMBERS", limits.MAX_FEDERATION_MEMBERS))


@pytest.fixture
def federation(aws_env: None) -> Iterator[ScaleFederation]:
    yield from scale_federation(aws_env)


def _name(i: int) -> str:
    return "alpha" if i == 0 else f"member{i:02d}"


def test_a_federation_grows_to_its_limit_one_pairing_at_a_time_within_the_quotas(federation):
    for i in range(SIZE):
        name = _name(i)
        federation.create(name, HOME if i % 2 == 0 else OTHER)
        result = federation.pair(name)
        assert result["status"] == "SUCCEEDED", (name, result.get("cause"))
        rules, groups = head_group_rules(federation), groups_per_eni(federation)
        assert max(rules.values()) <= RULES_QUOTA, (name, rules)
        assert max(groups.values()) <= GROUPS_PER_ENI_QUOTA, (name, groups)
    rules = head_group_rules(federation)
    # O(1) per group: ctld from the federation group and the prefix list, dbd merged into one range on alpha's, the
    # first (fallback) cluster of each VPC: the same handful at 2 members as at 50.
    assert max(rules.values()) <= 6, rules
    for cluster in federation.clusters.values():  # every head node carries its VPC's federation group
        group = federation_group(cluster.region, federation.networks[cluster.region].vpc_id)
        eni = network_interface(cluster.region, cluster.head_instance_id)
        described = boto3.client("ec2", region_name=cluster.region).describe_network_interfaces(NetworkInterfaceIds=[eni])
        assert group in [g["GroupId"] for g in described["NetworkInterfaces"][0]["Groups"]]
    for region, other in ((HOME, OTHER), (OTHER, HOME)):  # each region's list: the other region's subnet
        ec2 = boto3.client("ec2", region_name=region)
        lists = ingress.federation_prefix_lists(ec2, "hpc", "default")
        assert [ingress.prefix_list_entries(ec2, pl["PrefixListId"]) for pl in lists] == [[federation.networks[other].cidr]]


def _pair_three(federation: ScaleFederation) -> None:
    for i, region in enumerate((HOME, HOME, OTHER)):
        federation.create(_name(i), region)
        result = federation.pair(_name(i))
        assert result["status"] == "SUCCEEDED", result.get("cause")


def test_a_pairing_that_would_exceed_the_rules_quota_is_refused_before_anything_changes(federation):
    _pair_three(federation)
    alpha = federation.clusters["alpha"]
    ec2 = boto3.client("ec2", region_name=HOME)
    # an administrator's own rules fill alpha's group up to the quota
    room = RULES_QUOTA - ingress.rule_weight(ec2, ingress.rules_on_group(ec2, alpha.security_group_id))
    ec2.authorize_security_group_ingress(GroupId=alpha.security_group_id, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": f"192.168.{i}.0/24"} for i in range(room)]}])
    before = {name: sorted(r["SecurityGroupRuleId"] for r in ingress.rules_on_group(
        boto3.client("ec2", region_name=c.region), c.security_group_id)) for name, c in federation.clusters.items()}
    # a member in a new VPC: alpha's prefix list grows by its subnet, one more entry on alpha's group
    home = federation.networks[HOME]
    federation.networks[HOME] = create_network(HOME, "10.242.0.0/24")
    federation.create("member03", HOME)
    federation.networks[HOME] = home

    result = federation.pair("member03")

    assert (result["status"], result.get("error")) == ("FAILED", "PlanPairingFailed"), result.get("cause")
    cause = result["cause"]
    assert f"alpha: its head node security group {alpha.security_group_id} would hold" in cause
    assert "Inbound or outbound rules per security group' (L-0EA8095F) is 60: raise it in Service Quotas" in cause
    assert "AuthorizeIngress" not in cloud.state_names(result["executionArn"], HOME)
    after = {name: sorted(r["SecurityGroupRuleId"] for r in ingress.rules_on_group(
        boto3.client("ec2", region_name=c.region), c.security_group_id)) for name, c in federation.clusters.items()
        if name in before}
    assert after == before
    assert ingress.federation_prefix_lists(ec2, "hpc", "default")[0]["MaxEntries"] == 1  # not grown either


def test_a_head_node_with_five_groups_is_refused_with_the_groups_quota(federation):
    federation.create("alpha", HOME)
    ec2 = boto3.client("ec2", region_name=HOME)
    extra = [ec2.create_security_group(GroupName=f"extra{i}", Description="admin", VpcId=federation.networks[HOME].vpc_id)
             ["GroupId"] for i in range(4)]
    alpha = federation.clusters["alpha"]
    ec2.modify_network_interface_attribute(NetworkInterfaceId=network_interface(HOME, alpha.head_instance_id),
                                           Groups=[alpha.security_group_id, *extra])

    result = federation.pair("alpha")

    assert (result["status"], result.get("error")) == ("FAILED", "PlanPairingFailed"), result.get("cause")
    assert "already has 5 security groups" in result["cause"] and "(L-2AFB9258) is 5" in result["cause"]
    assert federation_group(HOME, federation.networks[HOME].vpc_id) is None


def _nothing_of_ours_references(cluster, federation: ScaleFederation) -> None:
    """No rule of ours, anywhere, references one of the cluster's groups: CloudFormation can delete them."""
    for region in (HOME, OTHER):
        ec2 = boto3.client("ec2", region_name=region)
        rules = [r for page in ec2.get_paginator("describe_security_group_rules").paginate() for r in page["SecurityGroupRules"]]
        assert not [r for r in rules if r.get("ReferencedGroupInfo", {}).get("GroupId") == cluster.security_group_id
                    and r["GroupId"] != cluster.security_group_id]


def test_deleting_members_cleans_up_and_the_last_one_leaves_nothing_of_ours(federation):
    _pair_three(federation)
    member01 = federation.clusters["member01"]

    result = federation.delete("member01")
    assert result["status"] == "SUCCEEDED", result.get("cause")
    _nothing_of_ours_references(member01, federation)

    result = federation.delete("member02")  # the only member in the other region
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert federation_group(OTHER, federation.networks[OTHER].vpc_id) is None
    for region in (HOME, OTHER):
        assert ingress.federation_prefix_lists(boto3.client("ec2", region_name=region), "hpc", "default") == []

    result = federation.delete("alpha")
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert federation_group(HOME, federation.networks[HOME].vpc_id) is None
    for region in (HOME, OTHER):
        ec2 = boto3.client("ec2", region_name=region)
        ours = ec2.describe_security_group_rules(Filters=[{"Name": "tag-key", "Values": ["slurm-multicluster:federation"]}])
        assert ours["SecurityGroupRules"] == []


def test_opting_out_takes_the_federation_group_off_the_clusters_running_nodes(federation):
    _pair_three(federation)
    member01 = federation.clusters["member01"]
    ec2 = boto3.client("ec2", region_name=HOME)
    group = federation_group(HOME, federation.networks[HOME].vpc_id)
    arn = cloud.start_execution(federation.deployment, {"stackName": "member01", "region": HOME},
                                cloud.UNPAIRING_STATE_MACHINE)
    result = cloud.wait_for_execution(arn, HOME, timeout=300)

    assert result["status"] == "SUCCEEDED", result.get("cause")
    _nothing_of_ours_references(member01, federation)
    for instance_id in member01.instance_ids:
        groups = ec2.describe_network_interfaces(NetworkInterfaceIds=[network_interface(HOME, instance_id)])
        assert group not in [g["GroupId"] for g in groups["NetworkInterfaces"][0]["Groups"]], instance_id
