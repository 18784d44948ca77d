"""SrunPortRange (issue 10): interactive srun/salloc -M across members, off by default, through the real pairing,
sweep and unpairing ASL in moto with the real handlers; SSM reaches simulated nodes (their discover-slurm.sh
reports each head node's SrunPortRange). What is observed is EC2 itself: the rules on each VPC's federation group.
"""

from __future__ import annotations

import json
from typing import Iterator

import boto3
import pytest

from lab import cloud
from lab.parallelcluster import declare_federation
from slurm_multicluster import ingress
from workflow.federation_network import (HOME, OTHER, ScaleFederation, federation_group, network_interface,
                                         scale_federation)

SRUN = "60001-63000"
MEMBERS = (("alpha", HOME), ("member01", HOME), ("member02", OTHER))  # two in one VPC, one in another region


@pytest.fixture
def deployment_parameters() -> dict[str, str]:
    return {}


@pytest.fixture
def federation(aws_env: None, deployment_parameters: dict[str, str]) -> Iterator[ScaleFederation]:
    yield from scale_federation(aws_env, deployment_parameters)


def _create(federation: ScaleFederation, srun_port_range: str | None = SRUN) -> None:
    for name, region in MEMBERS:
        federation.create(name, region)
        federation.nodes.head(name).srun_port_range = srun_port_range  # its slurm.conf's SrunPortRange


def _pair_all(federation: ScaleFederation) -> list[dict]:
    results = []
    for name, _ in MEMBERS:
        result = federation.pair(name)
        assert result["status"] == "SUCCEEDED", (name, result.get("cause"))
        results.append(result)
    return results


def _ours(region: str) -> list[dict]:
    ec2 = boto3.client("ec2", region_name=region)
    return [r for page in ec2.get_paginator("describe_security_group_rules").paginate(
        Filters=[{"Name": "tag-key", "Values": [ingress.OWNER_TAG]}]) for r in page["SecurityGroupRules"]]


def _on_federation_group(federation: ScaleFederation, region: str) -> set[tuple]:
    """(from, to, source group, source prefix list) of the inbound rules on the region's federation group."""
    group = federation_group(region, federation.networks[region].vpc_id)
    assert group
    ec2 = boto3.client("ec2", region_name=region)
    return {(r["FromPort"], r["ToPort"], r.get("ReferencedGroupInfo", {}).get("GroupId"), r.get("PrefixListId"))
            for r in ingress.rules_on_group(ec2, group) if not r["IsEgress"]}


def _srun_rules(federation: ScaleFederation, region: str) -> set[tuple]:
    group = federation_group(region, federation.networks[region].vpc_id)
    ec2 = boto3.client("ec2", region_name=region)
    prefix_list = ingress.federation_prefix_lists(ec2, "hpc", "default")[0]["PrefixListId"]
    return {(6818, 6818, group, None), (6818, 6818, None, prefix_list),
            (60001, 63000, group, None), (60001, 63000, None, prefix_list)}


def _opens(rule: dict, port: int) -> bool:
    return rule["FromPort"] <= port <= rule["ToPort"]


def _compute_groups(federation: ScaleFederation) -> set[str]:
    """The groups of every member's compute nodes, but the federation's (what ParallelCluster gave them)."""
    groups = set()
    for cluster in federation.clusters.values():
        ec2 = boto3.client("ec2", region_name=cluster.region)
        feds = {federation_group(cluster.region, federation.networks[cluster.region].vpc_id)}
        for instance_id in cluster.compute_instance_ids:
            eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[network_interface(cluster.region, instance_id)])
            groups |= {g["GroupId"] for g in eni["NetworkInterfaces"][0]["Groups"]} - feds
    return groups


def test_srun_port_range_is_off_by_default_and_nothing_opens_slurmd_or_srun_ports(federation):
    _create(federation, srun_port_range=None)  # members as ParallelCluster makes them: no SrunPortRange

    results = _pair_all(federation)

    for region in (HOME, OTHER):
        assert _on_federation_group(federation, region) == set()  # the federation group holds no rule
        ours = _ours(region)
        assert ours and not [r for r in ours if _opens(r, 6818) or _opens(r, 60001)]
    assert all(json.loads(r["output"])["network"]["notes"] == [] for r in results)


@pytest.mark.parametrize("deployment_parameters", [{"SrunPortRange": SRUN}])
def test_srun_port_range_on_opens_4_rules_on_each_federation_group_and_none_to_a_members_groups(federation):
    _create(federation)
    queue = cloud.events_queue(HOME)

    results = _pair_all(federation)

    for region in (HOME, OTHER):
        assert _on_federation_group(federation, region) == _srun_rules(federation, region)
    members_groups = {c.security_group_id for c in federation.clusters.values()} | _compute_groups(federation)
    for region in (HOME, OTHER):
        for rule in _ours(region):
            if rule["GroupId"] in members_groups:  # the head node rules: Slurm's controller ports only
                assert not _opens(rule, 6818) and not _opens(rule, 60001), rule
    last = json.loads(results[-1]["output"])["network"]
    assert last["srunPortRange"] == SRUN
    budget = {b["cluster"]: b for b in last["budget"]}
    for region in (HOME, OTHER):
        vpc = federation.networks[region].vpc_id
        assert budget[f"federation hosts in {vpc}"]["rulesAfter"] == 4  # each prefix list: one subnet
    # created before the federation group existed, their compute nodes do not carry it: no srun path, said so
    notes = last["notes"]
    assert len(notes) == 3 and all("interactive srun/salloc -M has no path" in n for n in notes)
    for name, _ in MEMBERS:
        assert any(f"{name}'s login and compute nodes" in n for n in notes), notes
    paired = [e for e in cloud.published(queue, HOME) if e["detail-type"] == "Slurm Cluster Paired"]
    assert paired and paired[-1]["detail"]["notes"] == notes


@pytest.mark.parametrize("deployment_parameters", [{"SrunPortRange": SRUN}])
def test_a_member_running_another_srun_port_range_is_refused_and_nothing_changes(federation):
    _create(federation)
    _pair_all(federation)
    federation.create("member03", HOME)
    federation.nodes.head("member03").srun_port_range = "50001-50999"
    before = {region: sorted(r["SecurityGroupRuleId"] for r in _ours(region)) for region in (HOME, OTHER)}
    member03 = federation.clusters["member03"]
    ec2 = boto3.client("ec2", region_name=HOME)
    eni = network_interface(HOME, member03.head_instance_id)
    groups_before = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["Groups"]

    result = federation.pair("member03")

    assert result["status"] == "FAILED", result
    cause = result["cause"]
    assert "CheckPrerequisitesFailed" in (result.get("error") or "") + cause, result
    assert (f"member03 runs with SrunPortRange 50001-50999, the federation's SrunPortRange option is {SRUN}: set "
            f"SrunPortRange={SRUN} in its slurm.conf (ParallelCluster Scheduling/SlurmSettings/CustomSlurmSettings), "
            "then pcluster update-cluster") in cause
    assert "AuthorizeIngress" not in cloud.state_names(result["executionArn"], HOME)
    assert {region: sorted(r["SecurityGroupRuleId"] for r in _ours(region)) for region in (HOME, OTHER)} == before
    assert ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["Groups"] == groups_before


@pytest.mark.parametrize("deployment_parameters", [{"SrunPortRange": SRUN}])
def test_the_federations_override_turns_it_off_for_that_federation(federation):
    _create(federation, srun_port_range=None)
    declare_federation(HOME, "hpc", federation.clusters["alpha"].stack_id, srunPortRange="")

    _pair_all(federation)  # no member runs SrunPortRange: with the option off for hpc, nothing asks it to

    for region in (HOME, OTHER):
        assert _on_federation_group(federation, region) == set()


@pytest.mark.parametrize("deployment_parameters", [{"SrunPortRange": SRUN}])
def test_turning_it_off_then_sweeping_revokes_the_federation_groups_rules(federation):
    _create(federation)
    _pair_all(federation)
    declare_federation(HOME, "hpc", federation.clusters["alpha"].stack_id, srunPortRange="")

    dry = cloud.wait_for_execution(cloud.start_execution(federation.deployment, {"dryRun": True},
                                                         cloud.SWEEP_STATE_MACHINE), HOME, timeout=300)
    assert dry["status"] == "SUCCEEDED", dry.get("cause")
    drifted = json.loads(dry["output"])["drifted"]
    assert drifted and all("8 ingress rules SrunPortRange no longer opens" in d["drift"] for d in drifted)
    for region in (HOME, OTHER):  # a dryRun changes nothing
        assert _on_federation_group(federation, region) == _srun_rules(federation, region)

    swept = cloud.wait_for_execution(cloud.start_execution(federation.deployment, {"dryRun": False},
                                                           cloud.SWEEP_STATE_MACHINE), HOME, timeout=300)

    assert swept["status"] == "SUCCEEDED", swept.get("cause")
    report = json.loads(swept["output"])
    assert report["failed"] == [] and report["repaired"], report
    for region in (HOME, OTHER):
        assert _on_federation_group(federation, region) == set()
        assert [r for r in _ours(region) if r["GroupId"] not in {c.security_group_id for c in federation.clusters.values()}] == []


@pytest.mark.parametrize("deployment_parameters", [{}, {"SrunPortRange": SRUN}], ids=["srun-off", "srun-on"])
def test_unpairing_keeps_the_remaining_members_rules_and_the_last_one_leaves_nothing(federation, deployment_parameters):
    srun = bool(deployment_parameters)
    _create(federation, SRUN if srun else None)
    _pair_all(federation)
    member01 = federation.clusters["member01"]
    group = federation_group(HOME, federation.networks[HOME].vpc_id)
    # as AWS reports a head node that carries the federation group (attached, or HeadNode AdditionalSecurityGroups
    # from the config snippet): among the instance's own groups. It is not the departing cluster's to revoke.
    boto3.client("ec2", region_name=HOME).modify_instance_attribute(
        InstanceId=member01.head_instance_id, Groups=[member01.security_group_id, group])
    head_rules = {r["SecurityGroupRuleId"] for r in _ours(HOME)  # but the fallback from member01's own nodes
                  if r["GroupId"] == federation.clusters["alpha"].security_group_id
                  and {"Key": ingress.SOURCE_STACK_TAG, "Value": member01.stack_id} not in r.get("Tags", [])}
    assert head_rules  # alpha is reached from the federation group and prefix list

    result = federation.delete("member01")  # alpha stays in its VPC
    assert result["status"] == "SUCCEEDED", result.get("cause")
    # member02 is now the only member in the other region: each prefix list still holds the other's subnet
    for region in (HOME, OTHER):
        assert _on_federation_group(federation, region) == (_srun_rules(federation, region) if srun else set())
    assert {r["SecurityGroupRuleId"] for r in _ours(HOME)
            if r["GroupId"] == federation.clusters["alpha"].security_group_id} == head_rules

    for name in ("member02", "alpha"):
        result = federation.delete(name)
        assert result["status"] == "SUCCEEDED", result.get("cause")
    for region in (HOME, OTHER):
        assert federation_group(region, federation.networks[region].vpc_id) is None
        assert _ours(region) == []
