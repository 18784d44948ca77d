"""A queue with several subnets (issue 10): ParallelCluster's launch template names only its first, so a compute
node launching in the second is no source of submissions that AWS shows until it runs and a sweep sees it. The
head node's fleet-config.json lists them all (discover-slurm.sh ``queueSubnetIds``): their CIDRs join the prefix
lists of the other VPCs at pairing, stay there while the member stays, and go with it. A subnet a head node
reports outside its own VPC, or that does not exist, is refused before anything changes.

Real pairing, unpairing and sweep ASL in moto, real handlers; nodes simulated behind the SSM seam.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import boto3
import pytest

from lab import cloud
from slurm_multicluster import ingress
from workflow.federation_network import HOME, OTHER, ScaleFederation, scale_federation

QUEUE_CIDRS = ["10.241.1.0/24", "10.241.2.0/24"]  # beta's queue subnets, in its VPC (eu-west-1), no node in them


@pytest.fixture
def federation(aws_env: None) -> Iterator[ScaleFederation]:
    yield from scale_federation(aws_env)


def _prefix_list_of(region: str, vpc_id: str) -> list[str] | None:
    """The entries of the federation's prefix list of ``vpc_id`` (the other VPCs' member subnets), None without one."""
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ingress.read_vpc(ec2, region, vpc_id, "hpc", "default")
    return vpc.entries if vpc.prefix_list_id else None


def _network_of_ours() -> dict[str, Any]:
    """Every rule, group and prefix list (with its entries) of ours, in both regions."""
    found: dict[str, Any] = {}
    for region in (HOME, OTHER):
        ec2 = boto3.client("ec2", region_name=region)
        rules = ec2.describe_security_group_rules(
            Filters=[{"Name": "tag-key", "Values": [ingress.OWNER_TAG]}])["SecurityGroupRules"]
        found[f"{region} rules"] = sorted(r["SecurityGroupRuleId"] for r in rules)
        found[f"{region} prefix lists"] = {pl["PrefixListId"]: ingress.prefix_list_entries(ec2, pl["PrefixListId"])
                                           for pl in ingress.federation_prefix_lists(ec2, "hpc", "default")}
    return found


def _beta_with_a_two_subnet_queue(federation: ScaleFederation, reported: list[str] | None = None) -> list[str]:
    """beta in eu-west-1, its queue on two subnets of its VPC where no compute node runs (its only one terminated);
    its head node reports ``reported`` (default: those two) as fleet-config.json's SubnetIds. Returns their ids."""
    beta = federation.create("beta", OTHER)
    ec2 = boto3.client("ec2", region_name=OTHER)
    ec2.terminate_instances(InstanceIds=beta.compute_instance_ids)
    subnets = [ec2.create_subnet(VpcId=federation.networks[OTHER].vpc_id, CidrBlock=cidr)["Subnet"]["SubnetId"]
               for cidr in QUEUE_CIDRS]
    federation.nodes.head("beta").queue_subnet_ids = sorted(subnets if reported is None else reported)
    return subnets


def _sweep(federation: ScaleFederation, dry_run: bool = True) -> dict[str, Any]:
    arn = cloud.start_execution(federation.deployment, {"dryRun": dry_run}, cloud.SWEEP_STATE_MACHINE)
    result = cloud.wait_for_execution(arn, HOME, timeout=300)
    assert result["status"] == "SUCCEEDED", result.get("cause")
    return json.loads(result["output"])


def test_a_queues_subnets_join_the_other_vpcs_prefix_lists_and_leave_with_the_member(federation):
    federation.create("alpha", HOME)
    _beta_with_a_two_subnet_queue(federation)
    federation.create("gamma", HOME)  # alpha's VPC: its departure recomputes the list that holds beta's subnets
    home_vpc, other_vpc = federation.networks[HOME].vpc_id, federation.networks[OTHER].vpc_id
    beta_cidrs = sorted([federation.networks[OTHER].cidr, *QUEUE_CIDRS])

    for name in ("alpha", "beta", "gamma"):
        result = federation.pair(name)
        assert result["status"] == "SUCCEEDED", (name, result.get("cause"))

    # alpha's and gamma's head nodes are reached from beta's queue subnets before any node runs there
    assert _prefix_list_of(HOME, home_vpc) == beta_cidrs
    assert _prefix_list_of(OTHER, other_vpc) == [federation.networks[HOME].cidr]

    # the sweep plans the same network as the pairings: nothing to add, nothing drifted
    report = _sweep(federation)
    assert sorted(report["inSync"]) == ["alpha", "beta", "gamma"], report
    assert report["drifted"] == [] and report["failed"] == []
    assert _prefix_list_of(HOME, home_vpc) == beta_cidrs

    # gamma leaves: the list is recomputed from the remaining members, beta's queue subnets included
    assert federation.delete("gamma")["status"] == "SUCCEEDED"
    assert _prefix_list_of(HOME, home_vpc) == beta_cidrs

    # beta leaves: none of its subnets stays open (no member outside alpha's VPC is left: no list at all)
    result = federation.delete("beta")
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert _prefix_list_of(HOME, home_vpc) is None
    assert not [cidr for entries in _network_of_ours()[f"{HOME} prefix lists"].values() for cidr in entries
                if cidr in beta_cidrs]


def test_a_subnet_added_to_a_queue_later_is_the_members_drift_and_the_sweep_opens_it(federation):
    """pcluster update-cluster gave beta's queue a third subnet (fleet-config.json is regenerated; no event of ours
    followed): the dry-run sweep names it as beta's drift, the sweep adds it."""
    federation.create("alpha", HOME)
    subnets = _beta_with_a_two_subnet_queue(federation)
    for name in ("alpha", "beta"):
        assert federation.pair(name)["status"] == "SUCCEEDED"
    ec2 = boto3.client("ec2", region_name=OTHER)
    added = ec2.create_subnet(VpcId=federation.networks[OTHER].vpc_id, CidrBlock="10.241.3.0/24")["Subnet"]["SubnetId"]
    federation.nodes.head("beta").queue_subnet_ids = sorted([*subnets, added])

    report = _sweep(federation)
    assert report["inSync"] == ["alpha"]
    assert report["drifted"] == [{"cluster": "beta", "federation": "hpc",
                                  "drift": ["1 subnet missing from the other VPCs' prefix lists"]}]
    assert "10.241.3.0/24" not in _prefix_list_of(HOME, federation.networks[HOME].vpc_id)

    repaired = _sweep(federation, dry_run=False)
    assert [line["cluster"] for line in repaired["repaired"]] == ["beta"]
    assert "10.241.3.0/24" in _prefix_list_of(HOME, federation.networks[HOME].vpc_id)
    assert _sweep(federation)["drifted"] == []


@pytest.mark.parametrize("foreign", ["another VPC's subnet", "a subnet that does not exist"])
def test_a_queue_subnet_outside_the_members_vpc_refuses_the_pairing_before_anything_changes(federation, foreign):
    federation.create("alpha", HOME)
    assert federation.pair("alpha")["status"] == "SUCCEEDED"
    ec2 = boto3.client("ec2", region_name=OTHER)
    if foreign == "another VPC's subnet":  # a network of the same account, in beta's region
        vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
        stranger = ec2.create_subnet(VpcId=vpc, CidrBlock="10.99.7.0/24")["Subnet"]["SubnetId"]
    else:
        stranger = "subnet-0123456789abcdef0"
    subnets = _beta_with_a_two_subnet_queue(federation)
    federation.nodes.head("beta").queue_subnet_ids = sorted([*subnets, stranger])
    before = _network_of_ours()

    result = federation.pair("beta")

    assert (result["status"], result.get("error")) == ("FAILED", "PlanPairingFailed"), result.get("cause")
    assert "beta: its head node reports queue subnets (fleet-config.json) outside its VPC" in result["cause"]
    assert stranger in result["cause"]
    assert "AuthorizeIngress" not in cloud.state_names(result["executionArn"], HOME)
    assert _network_of_ours() == before
    assert "10.99.7.0/24" not in json.dumps(_network_of_ours())


def test_a_peers_refused_queue_subnet_never_halts_the_pairing_of_another_cluster(federation):
    """beta's head node now reports a subnet of another VPC: beta's own pairing (and the sweep's) refuses it, but
    gamma still pairs, and nothing of that network reaches any prefix list."""
    federation.create("alpha", HOME)
    subnets = _beta_with_a_two_subnet_queue(federation)
    for name in ("alpha", "beta"):
        assert federation.pair(name)["status"] == "SUCCEEDED"
    ec2 = boto3.client("ec2", region_name=OTHER)
    vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    stranger = ec2.create_subnet(VpcId=vpc, CidrBlock="10.99.7.0/24")["Subnet"]["SubnetId"]
    federation.nodes.head("beta").queue_subnet_ids = sorted([*subnets, stranger])
    federation.create("gamma", OTHER)

    assert federation.pair("gamma")["status"] == "SUCCEEDED"
    assert federation.pair("beta")["error"] == "PlanPairingFailed"
    assert set(QUEUE_CIDRS) <= set(_prefix_list_of(HOME, federation.networks[HOME].vpc_id))
    assert "10.99.7.0/24" not in json.dumps(_network_of_ours())
