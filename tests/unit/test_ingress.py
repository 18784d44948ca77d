"""The federation's network (ingress.py): what is planned, and what applying and undoing it leaves in EC2 (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import ingress
from slurm_multicluster.errors import PrerequisiteFailed
from slurm_multicluster.models import HeadNode, Member, SlurmSettings


def _member(name, vpc, group, accounting=False, ports="6820-6829", dbd=6819, eni=None, subnet="10.0.0.0/24",
            node_groups=()):
    return Member(
        cluster_name=name, stack_id=f"arn:{name}", region="us-east-1", federation="hpc", is_accounting=accounting,
        head_node=HeadNode(instance_id="i-0123456789abcdef0", private_ip="10.0.0.1", security_group_ids=[group],
                           vpc_id=vpc, network_interface_id=eni, subnet_cidr=subnet),
        node_security_group_sets=[list(g) for g in node_groups],
        slurm=SlurmSettings(cluster_name=name, slurmctld_port=ports, slurm_version="23.11.10",
                            dbd_port=dbd if accounting else None, munge_key_sha256="a" * 64),
    )


def _flows(rules):
    return {(r.target_cluster, r.source_kind, r.purpose, r.from_port, r.to_port) for r in rules}


def test_each_head_node_group_gets_its_own_ports_from_the_federation_group_and_the_other_vpcs_list():
    alpha = _member("alpha", "vpc-1", "sg-0aaaaaaaaaaaaaaaa", accounting=True)
    beta = _member("beta", "vpc-1", "sg-0bbbbbbbbbbbbbbbb", ports="6817")
    gamma = _member("gamma", "vpc-2", "sg-0cccccccccccccccc", subnet="10.1.0.0/24")
    vpcs = [ingress.FederationVpc(region="us-east-1", vpc_id="vpc-1", add_entries=["10.1.0.0/24"]),
            ingress.FederationVpc(region="us-east-1", vpc_id="vpc-2", add_entries=["10.0.0.0/24"])]
    assert _flows(ingress.plan_rules([alpha, beta, gamma], vpcs)) == {
        # DbdPort 6819 and SlurmctldPort 6820-6829 are adjacent: one rule per source on the accounting head
        ("alpha", "federation-group", "slurmdbd+slurmctld", 6819, 6829),
        ("alpha", "prefix-list", "slurmdbd+slurmctld", 6819, 6829),
        ("beta", "federation-group", "slurmctld", 6817, 6817),  # the member's own port, read from its config
        ("beta", "prefix-list", "slurmctld", 6817, 6817),
        ("gamma", "federation-group", "slurmctld", 6820, 6829),
        ("gamma", "prefix-list", "slurmctld", 6820, 6829),
    }


def test_nodes_without_the_federation_group_fall_back_to_their_own_group_on_the_peers_heads_only():
    alpha = _member("alpha", "vpc-1", "sg-0aaaaaaaaaaaaaaaa", accounting=True, node_groups=[["sg-0aaaaaaaaaaaaaaaa"]])
    beta = _member("beta", "vpc-1", "sg-0bbbbbbbbbbbbbbbb", node_groups=[["sg-0dddddddddddddddd", "sg-0fed000000000000a"]])
    vpcs = [ingress.FederationVpc(region="us-east-1", vpc_id="vpc-1", group_id="sg-0fed000000000000a")]
    fallbacks = {(r.target_cluster, r.source_group_id) for r in ingress.plan_rules([alpha, beta], vpcs)
                 if r.source_kind == "group"}
    assert fallbacks == {("beta", "sg-0aaaaaaaaaaaaaaaa")}  # beta's nodes carry ours already; alpha's own nodes skip alpha


def _purposes(rules):
    return {(r.target_kind, r.group_id, r.source_kind, r.source_group_id, r.purpose, r.from_port, r.to_port)
            for r in rules if r.target_kind == "federation-group"}


def test_srun_port_range_off_plans_nothing_on_the_federation_groups():
    alpha = _member("alpha", "vpc-1", "sg-0aaaaaaaaaaaaaaaa", accounting=True)
    gamma = _member("gamma", "vpc-2", "sg-0cccccccccccccccc", subnet="10.1.0.0/24")
    vpcs = [ingress.FederationVpc(region="us-east-1", vpc_id="vpc-1", group_id="sg-0fed00000000000a1",
                                  prefix_list_id="pl-0aaaaaaaaaaaaaaaa", entries=["10.1.0.0/24"]),
            ingress.FederationVpc(region="us-east-1", vpc_id="vpc-2", group_id="sg-0fed00000000000a2",
                                  prefix_list_id="pl-0bbbbbbbbbbbbbbbb", entries=["10.0.0.0/24"])]
    rules = ingress.plan_rules([alpha, gamma], vpcs)
    assert rules and not _purposes(rules)
    assert not {r.purpose for r in rules} & {"slurmd", "srun"}
    assert ingress.srun_notes([alpha, gamma], vpcs, "") == []


def test_srun_port_range_on_opens_4_rules_per_federation_group_whatever_the_federation_size():
    vpcs = [ingress.FederationVpc(region="us-east-1", vpc_id="vpc-1", group_id="sg-0fed00000000000a1",
                                  prefix_list_id="pl-0aaaaaaaaaaaaaaaa", entries=["10.1.0.0/24"]),
            ingress.FederationVpc(region="us-east-1", vpc_id="vpc-2", group_id="sg-0fed00000000000a2",
                                  prefix_list_id="pl-0bbbbbbbbbbbbbbbb", entries=["10.0.0.0/24"])]
    for size in (2, 10, 50):
        members = [_member(f"m{i}", "vpc-1" if i % 2 == 0 else "vpc-2", f"sg-0{i:016x}", accounting=i == 0,
                           subnet="10.0.0.0/24" if i % 2 == 0 else "10.1.0.0/24") for i in range(size)]
        rules = [r for r in ingress.plan_rules(members, vpcs, "60001-63000") if r.target_kind == "federation-group"]
        assert _purposes(rules) == {
            ("federation-group", group, source, group if source == "federation-group" else None, purpose, low, high)
            for group in ("sg-0fed00000000000a1", "sg-0fed00000000000a2")
            for source in ("federation-group", "prefix-list")
            for purpose, low, high in (("slurmd", 6818, 6818), ("srun", 60001, 63000))
        }
        assert len(rules) == 8  # 4 per federation group
        assert {r.source_prefix_list_id for r in rules if r.source_kind == "prefix-list"} == {
            "pl-0aaaaaaaaaaaaaaaa", "pl-0bbbbbbbbbbbbbbbb"}
        head_groups = {m.head_node.security_group_ids[0] for m in members}
        assert not any(r.group_id in head_groups for r in rules)  # nothing on a member's own groups


def test_srun_port_range_notes_the_nodes_that_do_not_carry_the_federation_group():
    alpha = _member("alpha", "vpc-1", "sg-0aaaaaaaaaaaaaaaa", accounting=True, node_groups=[["sg-0aaaaaaaaaaaaaaaa"]])
    beta = _member("beta", "vpc-1", "sg-0bbbbbbbbbbbbbbbb", node_groups=[["sg-0dddddddddddddddd", "sg-0fed000000000000a"]])
    vpcs = [ingress.FederationVpc(region="us-east-1", vpc_id="vpc-1", group_id="sg-0fed000000000000a")]
    notes = ingress.srun_notes([alpha, beta], vpcs, "60001-63000")
    assert len(notes) == 1
    assert "alpha's login and compute nodes of security group sg-0aaaaaaaaaaaaaaaa" in notes[0]
    assert "AdditionalSecurityGroups" in notes[0]
    rules = ingress.plan_rules([alpha, beta], vpcs, "60001-63000")
    assert not any(r.purpose in ("slurmd", "srun") and r.source_kind == "group" for r in rules)  # no srun fallback


@pytest.fixture
def ec2(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def _pair(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    members = []
    for name in ("alpha", "beta"):
        group = ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
        eni = ec2.create_network_interface(SubnetId=subnet, Groups=[group])["NetworkInterface"]["NetworkInterfaceId"]
        members.append(_member(name, vpc, group, accounting=name == "alpha", eni=eni))
    return members


def _ours(ec2):
    return ec2.describe_security_group_rules(
        Filters=[{"Name": "tag:slurm-multicluster:federation", "Values": ["hpc"]}])["SecurityGroupRules"]


def _quotas(region):
    return boto3.client("service-quotas", region_name=region)


def test_connecting_twice_changes_nothing_the_second_time(ec2):
    members = _pair(ec2)
    first = ingress.connect(lambda r: ec2, _quotas, members, "exec-1", "default")
    second = ingress.connect(lambda r: ec2, _quotas, members, "exec-2", "default")
    assert len(first["added"]) == 2 and len(first["attached"]) == 2 and len(first["createdGroups"]) == 1
    assert (second["added"], second["attached"], second["createdGroups"]) == ([], [], [])
    assert {t["Value"] for r in _ours(ec2) for t in r["Tags"] if t["Key"] == "slurm-multicluster:execution"} == {"exec-1"}


def test_an_existing_admin_rule_is_respected_not_duplicated(ec2):
    alpha, beta = _pair(ec2)
    ingress.connect(lambda r: ec2, _quotas, [alpha], "exec-alpha", "default")
    group = ingress.federation_group(ec2, alpha.head_node.vpc_id, "hpc", "default")
    ec2.authorize_security_group_ingress(GroupId=beta.head_node.security_group_ids[0], IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}])
    added = ingress.connect(lambda r: ec2, _quotas, [alpha, beta], "exec-beta", "default")["added"]
    assert added == []  # beta's group already allows every federation host


def test_undoing_a_pairing_removes_exactly_what_its_execution_added(ec2):
    alpha, beta = _pair(ec2)
    ingress.connect(lambda r: ec2, _quotas, [alpha], "exec-alpha", "default")
    network, missing = ingress.plan_network(lambda r: ec2, _quotas, [alpha, beta], "default")
    ingress.apply_network(lambda r: ec2, network, missing, "exec-beta", "default")
    undone = ingress.undo_network(lambda r: ec2, network, "exec-beta", "default")
    assert len(undone["revoked"]) == 1 and undone["detached"] == [beta.head_node.network_interface_id]
    assert ingress.rules_added_by(lambda r: ec2, ["us-east-1"], "exec-alpha")  # alpha's pairing untouched
    group = ingress.federation_group(ec2, alpha.head_node.vpc_id, "hpc", "default")
    assert group and [g["GroupId"] for g in ec2.describe_network_interfaces(
        NetworkInterfaceIds=[beta.head_node.network_interface_id])["NetworkInterfaces"][0]["Groups"]] == [
        beta.head_node.security_group_ids[0]]


def test_a_same_named_group_this_deployment_did_not_create_is_refused(ec2):
    alpha, _ = _pair(ec2)
    ec2.create_security_group(GroupName=ingress.resource_name("default", "hpc"), Description="x", VpcId=alpha.head_node.vpc_id)
    with pytest.raises(PrerequisiteFailed, match="was not created by slurm-multicluster deployment default"):
        ingress.plan_network(lambda r: ec2, _quotas, [alpha], "default")


def _fed_group_rules(ec2, group):
    return sorted((r["FromPort"], r["ToPort"], r.get("ReferencedGroupInfo", {}).get("GroupId"), r.get("PrefixListId"))
                  for r in ingress.rules_on_group(ec2, group) if not r["IsEgress"])


def test_srun_port_range_rules_land_on_the_federation_group_created_in_the_same_run_and_are_budgeted(ec2):
    members = _pair(ec2)
    network, missing = ingress.plan_network(lambda r: ec2, _quotas, members, "default", "60001-63000")
    srun = [r for r in missing if r.target_kind == "federation-group"]
    assert len(srun) == 2 and {r.group_id for r in srun} == {""}  # one VPC: no prefix list; the group is created
    budget = [b for b in network.budget if b.cluster.startswith("federation hosts")]
    assert len(budget) == 1 and (budget[0].rules_now, budget[0].rules_after) == (0, 2)
    applied = ingress.apply_network(lambda r: ec2, network, missing, "exec-1", "default")
    group = ingress.federation_group(ec2, members[0].head_node.vpc_id, "hpc", "default")
    assert _fed_group_rules(ec2, group) == [(6818, 6818, group, None), (60001, 63000, group, None)]
    assert len(applied["added"]) == 4  # 2 head node rules + 2 on the federation group
    tags = [{t["Key"]: t["Value"] for t in r["Tags"]} for r in ingress.rules_on_group(ec2, group) if not r["IsEgress"]]
    assert all(t["slurm-multicluster:federation"] == "hpc" and t["slurm-multicluster:execution"] == "exec-1"
               for t in tags)


def test_srun_port_range_turned_off_or_changed_revokes_the_old_rules(ec2):
    members = _pair(ec2)
    ingress.connect(lambda r: ec2, _quotas, members, "exec-1", "default", "60001-63000")
    group = ingress.federation_group(ec2, members[0].head_node.vpc_id, "hpc", "default")
    ingress.connect(lambda r: ec2, _quotas, members, "exec-2", "default", "50001-50999")
    assert _fed_group_rules(ec2, group) == [(6818, 6818, group, None), (50001, 50999, group, None)]
    again, _ = ingress.plan_network(lambda r: ec2, _quotas, members, "default", "50001-50999")
    assert again.revoke == [] and not again.changes()  # in place: nothing to do
    off, missing = ingress.plan_network(lambda r: ec2, _quotas, members, "default", "")
    assert len(off.revoke) == 2 and off.changes() and missing == []
    done = ingress.apply_network(lambda r: ec2, off, missing, "exec-3", "default")
    assert len(done["revoked"]) == 2
    assert _fed_group_rules(ec2, group) == []
    assert len(_ours(ec2)) == 2  # the head node rules stay


def test_srun_port_range_leaves_an_admins_rule_on_the_federation_group_alone(ec2):
    members = _pair(ec2)
    ingress.connect(lambda r: ec2, _quotas, members, "exec-1", "default")
    group = ingress.federation_group(ec2, members[0].head_node.vpc_id, "hpc", "default")
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.9.0.0/16"}]}])
    network, _ = ingress.plan_network(lambda r: ec2, _quotas, members, "default", "")
    assert network.revoke == []


def _two_vpcs_with_a_queue(ec2, reported=None):
    """alpha in one VPC; beta in another, its queue on a second subnet of its VPC that its head node reports
    (``reported`` adds or replaces what it reports). Returns (members, beta's queue subnet)."""
    alpha, _ = _pair(ec2)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    head_subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
    queue_subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.5.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="beta", Description="beta", VpcId=vpc)["GroupId"]
    eni = ec2.create_network_interface(SubnetId=head_subnet, Groups=[group])["NetworkInterface"]["NetworkInterfaceId"]
    beta = _member("beta", vpc, group, eni=eni, subnet="10.1.0.0/24")
    beta.slurm.queue_subnet_ids = [queue_subnet] if reported is None else reported(queue_subnet)
    return [alpha, beta], queue_subnet


def _entries(ec2, vpc_id):
    return ingress.read_vpc(ec2, "us-east-1", vpc_id, "hpc", "default").entries


def test_a_queues_subnets_are_resolved_in_the_members_region_and_planned_into_the_other_vpcs_list(ec2):
    members, _ = _two_vpcs_with_a_queue(ec2)
    cidrs, refused = ingress.queue_subnet_cidrs(lambda r: ec2, members)
    assert (cidrs, refused) == ({"arn:beta": ["10.1.5.0/24"]}, {})
    network, _ = ingress.plan_network(lambda r: ec2, _quotas, members, "default")
    assert network.vpc(members[0].head_node.vpc_id).add_entries == ["10.1.0.0/24", "10.1.5.0/24"]
    assert network.vpc(members[0].head_node.vpc_id).entry_sources == {"10.1.0.0/24": "beta", "10.1.5.0/24": "beta"}
    assert network.vpc(members[1].head_node.vpc_id).add_entries == ["10.0.0.0/24"]  # alpha reports none


@pytest.mark.parametrize("stranger", ["another VPC", "missing"])
def test_a_reported_subnet_outside_the_members_vpc_refuses_the_plan(ec2, stranger):
    def reported(queue_subnet):
        if stranger == "missing":
            return [queue_subnet, "subnet-0123456789abcdef0"]
        other = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        return [queue_subnet, ec2.create_subnet(VpcId=other, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]]

    members, _ = _two_vpcs_with_a_queue(ec2, reported)
    with pytest.raises(PrerequisiteFailed, match="beta: its head node reports queue subnets .* outside its VPC") as refused:
        ingress.plan_network(lambda r: ec2, _quotas, members, "default")
    assert ("does not exist in us-east-1" if stranger == "missing" else "is in vpc-") in str(refused.value)
    assert _ours(ec2) == [] and ingress.federation_prefix_lists(ec2, "hpc", "default") == []


def test_the_shrink_keeps_a_remaining_members_queue_subnets_and_ignores_refused_ones(ec2):
    members, _ = _two_vpcs_with_a_queue(ec2)
    ingress.connect(lambda r: ec2, _quotas, members, "exec-1", "default")
    alpha_vpc = members[0].head_node.vpc_id
    assert _entries(ec2, alpha_vpc) == ["10.1.0.0/24", "10.1.5.0/24"]

    kept = ingress.shrink_network(lambda r: ec2, ["us-east-1"], "hpc", members, "default")
    assert kept["removedEntries"] == [] and _entries(ec2, alpha_vpc) == ["10.1.0.0/24", "10.1.5.0/24"]

    members[1].slurm.queue_subnet_ids.append("subnet-0123456789abcdef0")  # now reports one that does not exist
    shrunk = ingress.shrink_network(lambda r: ec2, ["us-east-1"], "hpc", members, "default")
    assert shrunk["removedEntries"] == ["10.1.5.0/24"] and "subnet-0123456789abcdef0" in shrunk["queueSubnetsRefused"][0]
    assert _entries(ec2, alpha_vpc) == ["10.1.0.0/24"]
