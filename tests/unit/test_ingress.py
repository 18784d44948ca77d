"""Least-privilege rules between head nodes: what is planned, and what authorizing leaves in EC2 (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import ingress
from slurm_multicluster.models import HeadNode, Member, SlurmSettings


def _member(name, region, group, ip, accounting=False, ports="6820-6829", dbd=6819):
    return Member(
        cluster_name=name, stack_id=f"arn:{name}", region=region, federation="hpc", is_accounting=accounting,
        head_node=HeadNode(instance_id="i-0123456789abcdef0", private_ip=ip, security_group_ids=[group], vpc_id="vpc-1"),
        slurm=SlurmSettings(cluster_name=name, slurmctld_port=ports, slurm_version="23.11.10",
                            dbd_port=dbd if accounting else None, munge_key_sha256="a" * 64),
    )


def _flows(rules):
    return {(r.source_cluster, r.target_cluster, r.purpose, r.from_port, r.to_port) for r in rules}


def test_new_member_gets_slurmdbd_and_slurmctld_flows_only():
    alpha = _member("alpha", "us-east-1", "sg-0aaaaaaaaaaaaaaaa", "10.0.0.11", accounting=True)
    beta = _member("beta", "us-east-1", "sg-0bbbbbbbbbbbbbbbb", "10.0.0.21")
    rules = ingress.plan_rules(beta, [alpha, beta])
    assert _flows(rules) == {
        ("beta", "alpha", "slurmctld", 6820, 6829),
        ("alpha", "beta", "slurmctld", 6820, 6829),
        ("beta", "alpha", "slurmdbd", 6819, 6819),
    }
    assert all(r.source_group_id and not r.source_cidr for r in rules)  # same region: group references


def test_members_of_another_region_are_opened_to_the_peer_ip_only():
    alpha = _member("alpha", "us-east-1", "sg-0aaaaaaaaaaaaaaaa", "10.0.0.11", accounting=True)
    gamma = _member("gamma", "eu-west-1", "sg-0cccccccccccccccc", "10.1.0.31")
    rules = ingress.plan_rules(gamma, [alpha, gamma])
    on_alpha = [r for r in rules if r.target_cluster == "alpha"]
    on_gamma = [r for r in rules if r.target_cluster == "gamma"]
    assert {r.source_cidr for r in on_alpha} == {"10.1.0.31/32"}
    assert {r.source_cidr for r in on_gamma} == {"10.0.0.11/32"}
    assert {r.region for r in on_gamma} == {"eu-west-1"}
    assert not any(r.source_group_id for r in rules)


def test_a_third_member_is_connected_to_every_peer():
    alpha = _member("alpha", "us-east-1", "sg-0aaaaaaaaaaaaaaaa", "10.0.0.11", accounting=True)
    beta = _member("beta", "us-east-1", "sg-0bbbbbbbbbbbbbbbb", "10.0.0.21", ports="6817")
    gamma = _member("gamma", "us-east-1", "sg-0cccccccccccccccc", "10.0.0.31")
    flows = _flows(ingress.plan_rules(gamma, [alpha, beta, gamma]))
    assert ("gamma", "beta", "slurmctld", 6817, 6817) in flows  # the peer's own port, read from its config
    assert ("beta", "gamma", "slurmctld", 6820, 6829) in flows
    assert ("gamma", "alpha", "slurmdbd", 6819, 6819) in flows
    assert not any(purpose == "slurmdbd" and target != "alpha" for _, target, purpose, _, _ in flows)


@pytest.fixture
def ec2(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def _pair(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    groups = [ec2.create_security_group(GroupName=n, Description=n, VpcId=vpc)["GroupId"] for n in ("alpha", "beta")]
    alpha = _member("alpha", "us-east-1", groups[0], "10.0.0.11", accounting=True)
    beta = _member("beta", "us-east-1", groups[1], "10.0.0.21")
    return alpha, beta


def _ours(ec2):
    return ec2.describe_security_group_rules(
        Filters=[{"Name": "tag:slurm-multicluster:federation", "Values": ["hpc"]}])["SecurityGroupRules"]


def test_authorizing_twice_adds_nothing_the_second_time(ec2):
    alpha, beta = _pair(ec2)
    rules = ingress.plan_rules(beta, [alpha, beta])
    first = ingress.authorize(lambda region: ec2, rules, "hpc", "exec-1", "default")
    second = ingress.authorize(lambda region: ec2, rules, "hpc", "exec-2", "default")
    assert len(first) == 3 and second == []
    assert len(_ours(ec2)) == 3
    assert {t["Value"] for r in _ours(ec2) for t in r["Tags"] if t["Key"] == "slurm-multicluster:execution"} == {"exec-1"}


def test_an_existing_admin_rule_is_respected_not_duplicated(ec2):
    alpha, beta = _pair(ec2)
    ec2.authorize_security_group_ingress(GroupId=alpha.head_node.security_group_ids[0], IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": beta.head_node.security_group_ids[0]}]}])
    added = ingress.authorize(lambda region: ec2, ingress.plan_rules(beta, [alpha, beta]), "hpc", "exec-1", "default")
    assert {a.group_id for a in added} == {beta.head_node.security_group_ids[0]}  # alpha already allows beta


def test_rollback_revokes_exactly_the_rules_of_its_execution(ec2):
    alpha, beta = _pair(ec2)
    gamma_group = ec2.create_security_group(GroupName="gamma", Description="gamma", VpcId=ec2.describe_vpcs()["Vpcs"][-1]["VpcId"])["GroupId"]
    gamma = _member("gamma", "us-east-1", gamma_group, "10.0.0.31")
    ingress.authorize(lambda region: ec2, ingress.plan_rules(beta, [alpha, beta]), "hpc", "exec-beta", "default")
    ingress.authorize(lambda region: ec2, ingress.plan_rules(gamma, [alpha, beta, gamma]), "hpc", "exec-gamma", "default")
    before = len(_ours(ec2))
    revoked = ingress.revoke(lambda region: ec2, ingress.rules_added_by(lambda region: ec2, ["us-east-1"], "exec-gamma"))
    assert len(revoked) == 5  # gamma<->alpha ctld, gamma->alpha dbd, gamma<->beta ctld
    assert len(_ours(ec2)) == before - 5
    assert ingress.rules_added_by(lambda region: ec2, ["us-east-1"], "exec-beta")  # beta's pairing untouched


def test_a_failure_half_way_revokes_what_the_call_added(ec2):
    alpha, beta = _pair(ec2)
    rules = ingress.plan_rules(beta, [alpha, beta])
    broken = rules[-1].model_copy(update={"group_id": "sg-0ffffffffffffffff"})  # a group that does not exist
    with pytest.raises(Exception):
        ingress.authorize(lambda region: ec2, [*rules[:-1], broken], "hpc", "exec-1", "default")
    assert _ours(ec2) == []
