"""Pairings that must change nothing or roll back, and pairing across regions (real daemons)."""

from __future__ import annotations

import json

import boto3
import pytest

from lab import ClusterSpec
from lab.bridge import lab_cloud
from lab_helpers import sha256, submit, wait_job_completed, wait_until
from pairing_helpers import (
    ACCOUNTING_CONF, ALPHA_TAGS, BETA_TAGS, ENDING, KEY, SHARED_KEY, daemon, end_job_before_node_switches, eni_groups,
    events_queue, fresh_lab, our_rules, prefix_list_entries, published, run_logged, subnet_cidr, wait_job_completed_on,
)

pytestmark = pytest.mark.lab

@pytest.fixture
def two_clusters(lab_host):
    with fresh_lab("pairfault", "10.250.79.0/24", [ClusterSpec("alpha", accounting=True), ClusterSpec("beta")]) as lab:
        yield lab


def test_dry_run_returns_the_plan_and_changes_nothing(two_clusters):
    lab = two_clusters
    keys = (sha256(lab, "beta-head", KEY), sha256(lab, "beta-compute-1", KEY))
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    ctld = daemon(lab, "beta-head", "slurmctld")
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        result, _ = run_logged(cloud, {"stackName": "beta", "region": cloud.region, "dryRun": True})
        assert result["status"] == "SUCCEEDED", result.get("cause")
        plan = json.loads(result["output"])
        assert plan["mungeKey"]["installOnHead"] is True
        assert plan["accounting"]["host"] == lab.head("alpha").ip and plan["accounting"]["change"] is True
        alpha, beta = cloud.clusters["alpha"], cloud.clusters["beta"]
        # Each head node group: one rule from the federation group (still to be created), one from the peer's
        # node group (its compute nodes do not carry the federation group yet).
        assert sorted((r["groupId"], r["fromPort"], r["toPort"], r["sourceKind"], r.get("sourceGroupId"))
                      for r in plan["ingressRules"]) == sorted([
            (alpha.security_group_id, 6819, 6829, "federation-group", None),
            (alpha.security_group_id, 6819, 6829, "group", beta.security_group_id),
            (beta.security_group_id, 6820, 6829, "federation-group", None),
            (beta.security_group_id, 6820, 6829, "group", alpha.security_group_id),
        ])
        assert our_rules() == []
        assert eni_groups(alpha.head_instance_id) == {alpha.security_group_id} and eni_groups(beta.head_instance_id) == {beta.security_group_id}
        assert [g["GroupName"] for g in boto3.client("ec2", region_name=cloud.region).describe_security_groups()[
            "SecurityGroups"] if g["GroupName"].startswith("slurm-multicluster-")] == []
        assert boto3.client("secretsmanager", region_name=cloud.region).list_secrets()["SecretList"] == []
    assert (sha256(lab, "beta-head", KEY), sha256(lab, "beta-compute-1", KEY)) == keys
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf
    assert daemon(lab, "beta-head", "slurmctld") == ctld


def test_failed_verification_rolls_back_rules_config_and_keys(two_clusters):
    lab = two_clusters
    keys = {n: sha256(lab, n, KEY) for n in ("beta-head", "beta-compute-1")}
    shared = sha256(lab, "beta-head", SHARED_KEY)
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    # An admin drained beta's only compute node: verification must not call the pairing healthy.
    lab.exec("beta-head", ["scontrol", "update", "nodename=beta-compute-1", "state=down", "reason=maintenance"], check=True)
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}, parameters={"VerifyDeadlineSeconds": "10"}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "FAILED"
        assert result["error"] == "VerifyPairingFailed"
        assert "beta-compute-1" in result["cause"]
        assert our_rules() == []
    assert {n: sha256(lab, n, KEY) for n in keys} == keys
    assert sha256(lab, "beta-head", SHARED_KEY) == shared
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf
    lab.exec("beta-head", ["scontrol", "update", "nodename=beta-compute-1", "state=resume"], check=True)
    lab.wait_idle(["beta-compute-1"], timeout=60)
    wait_job_completed(lab, "beta-head", submit(lab, "beta-head", "--wrap", "hostname"), timeout=60)


def test_unreachable_accounting_slurmdbd_fails_clearly_before_changing_anything(two_clusters):
    lab = two_clusters
    keys = sha256(lab, "beta-head", KEY)
    lab.systemctl("alpha-head", "stop", "slurmdbd")
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "FAILED"
        assert result["error"] == "CheckPrerequisitesFailed"
        assert "PrerequisiteFailed" in result["cause"] and "slurmdbd" in result["cause"]
        assert our_rules() == []
    assert sha256(lab, "beta-head", KEY) == keys


def test_member_in_another_region_is_paired_through_ip_rules(two_clusters):
    lab = two_clusters
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}, cluster_regions={"beta": "eu-west-1"}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "SUCCEEDED", result.get("cause")
        alpha, beta = cloud.clusters["alpha"], cloud.clusters["beta"]
        # Security group references do not cross regions: each side admits the other region's member subnets
        # through its federation prefix list (and its own VPC's federation group, which only its head carries).
        for region, member, peer, peer_region in (("us-east-1", alpha, beta, "eu-west-1"),
                                                  ("eu-west-1", beta, alpha, "us-east-1")):
            rules = our_rules(region)
            assert {r["GroupId"] for r in rules} == {member.security_group_id}
            assert not any(r.get("CidrIpv4") for r in rules)
            [listed] = [r["PrefixListId"] for r in rules if r.get("PrefixListId")]
            assert prefix_list_entries(listed, region) == [subnet_cidr(peer.head_instance_id, peer_region)]
            [own] = [r["ReferencedGroupInfo"]["GroupId"] for r in rules if r.get("ReferencedGroupInfo")]
            assert eni_groups(member.head_instance_id, region) == {member.security_group_id, own}
    job = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == "beta-compute-1"


def test_member_in_another_region_opens_every_subnet_its_queues_list(two_clusters):
    """beta's queue has two subnets no node runs in (its launch template names neither): the real discover-slurm.sh
    reads them from the fleet-config.json ParallelCluster's cookbook writes on the head node, and alpha's prefix list
    in the other region admits both before a node launches there."""
    lab = two_clusters
    if lab.slurm_root("beta") is None:
        pytest.skip("beta's head node runs in the host's root: a fleet-config.json there would be the host's")
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}, cluster_regions={"beta": "eu-west-1"}) as cloud:
        beta = cloud.clusters["beta"]
        ec2 = boto3.client("ec2", region_name="eu-west-1")
        vpc = ec2.describe_instances(InstanceIds=[beta.head_instance_id])["Reservations"][0]["Instances"][0]["VpcId"]
        queue_cidrs = ["10.250.200.0/24", "10.250.201.0/24"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=cidr)["Subnet"]["SubnetId"] for cidr in queue_cidrs]
        fleet = {"compute": {"c5": {"Api": "create-fleet", "CapacityType": "on-demand",
                                    "Instances": [{"InstanceType": "c5.xlarge"}], "Networking": {"SubnetIds": subnets}},
                             "c6": {"Api": "run-instances", "CapacityType": "on-demand",
                                    "Instances": [{"InstanceType": "c6i.large"}]}}}
        lab.exec("beta-head", ["sh", "-c", "mkdir -p /etc/parallelcluster/slurm_plugin && "
                                           "cat > /etc/parallelcluster/slurm_plugin/fleet-config.json"],
                 input=json.dumps(fleet, indent=2), check=True)

        result, _ = run_logged(cloud, cloud.event_for("beta"))

        assert result["status"] == "SUCCEEDED", result.get("cause")
        [listed] = [r["PrefixListId"] for r in our_rules("us-east-1") if r.get("PrefixListId")]
        assert prefix_list_entries(listed, "us-east-1") == sorted(
            [subnet_cidr(beta.head_instance_id, "eu-west-1"), *queue_cidrs])


FAULTY_SLURMCTLD = """#!/bin/sh
# Fault injection: a slurmctld that exits at start once accounting points at a slurmdbd, logging as slurmctld does.
if grep -q '^AccountingStorageHost' /opt/slurm/etc/slurm_parallelcluster.conf; then
    echo "[$(date +%Y-%m-%dT%H:%M:%S.000)] fatal: injected fault at start" >>/var/log/slurm/slurmctld.log
    exit 1
fi
exec /usr/sbin/slurmctld -D -s
"""


def fail_slurmctld_on_accounting(lab) -> None:
    """beta's slurmctld (its systemd stand-in's unit) becomes FAULTY_SLURMCTLD: PointAccountingAtFederation fails."""
    lab.exec("beta-head", ["sh", "-c", "cat > /run/lab/faulty-slurmctld && chmod 755 /run/lab/faulty-slurmctld"],
             input=FAULTY_SLURMCTLD, check=True)
    units = json.loads(lab.exec("beta-head", ["cat", "/run/lab/units.json"], check=True).stdout)
    units["units"]["slurmctld"]["exec"] = ["/run/lab/faulty-slurmctld"]
    lab.exec("beta-head", ["sh", "-c", "cat > /run/lab/units.json"], input=json.dumps(units), check=True)


def test_slurmctld_that_fails_to_start_is_rolled_back_and_the_member_runs_jobs_as_before(two_clusters):
    lab = two_clusters
    fail_slurmctld_on_accounting(lab)
    keys = {n: sha256(lab, n, KEY) for n in ("beta-head", "beta-compute-1")}
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        queue = events_queue()
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "FAILED"
        assert result["error"] == "PointAccountingAtFederationFailed"
        # the error says what happened, from slurmctld's own log, not "did not answer within 120s"
        assert "slurmctld exited" in result["cause"] and "fatal: injected fault at start" in result["cause"]
        assert our_rules() == []
        assert [e["detail-type"] for e in published(queue)] == ["Slurm Cluster Pairing Failed"]
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf
    assert {n: sha256(lab, n, KEY) for n in keys} == keys
    assert lab.exec("beta-head", ["systemctl", "is-active", "slurmctld"]).stdout.strip() == "active"
    lab.wait_idle(["beta-compute-1"], timeout=60)
    wait_job_completed(lab, "beta-head", submit(lab, "beta-head", "--wrap", "hostname"), timeout=60)


def test_a_job_ending_while_a_failed_pairing_switches_back_completes_and_is_not_left_running(two_clusters):
    """The rollback puts beta's head node back on its own key first, its compute node after: a job ending in
    between reports its end while they disagree. slurmctld is held down then (restore-backup.sh --hold), so
    slurmstepd retries until slurmctld is back on the node's key; a slurmctld already on the other key would refuse
    the report and keep the job RUNNING with its node allocated."""
    lab = two_clusters
    fail_slurmctld_on_accounting(lab)
    job = submit(lab, "beta-head", "--wrap", ENDING.format(tag="beta"))
    wait_until(lambda: "RUNNING" in lab.exec("beta-head", ["squeue", "-h", "-o", "%T"]).stdout, 30,
               "beta's job running before the pairing")
    ended: list[str] = []
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        cloud.before_command = end_job_before_node_switches(lab, "beta", job, ended, document="RestoreBackup")
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        assert result["status"] == "FAILED" and result["error"] == "PointAccountingAtFederationFailed"
    assert ended in (["reported"], ["slurmctld down"]), "the job did not end between beta's head and compute node switching back"
    fields = wait_job_completed(lab, "beta-head", job, timeout=60)
    assert fields["ExitCode"] == "0:0"
    lab.wait_idle(["beta-compute-1"], timeout=60)


def test_member_with_its_own_slurmdbd_switches_to_the_federation_and_stops_its_own(lab_host):
    # beta was created with its own Database (MariaDB + slurmdbd on its head node), as many clusters are.
    with fresh_lab("pairdbd", "10.250.80.0/24", [ClusterSpec("alpha", accounting=True),
                                                 ClusterSpec("beta", accounting=True)]) as lab:
        assert lab.exec("beta-head", ["systemctl", "is-active", "slurmdbd"]).stdout.strip() == "active"
        with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
            result, _ = run_logged(cloud, cloud.event_for("beta"))
            assert result["status"] == "SUCCEEDED", result.get("cause")
            assert json.loads(result["output"])["accounting"]["stopLocalSlurmdbd"] is True
        assert lab.exec("beta-head", ["systemctl", "is-active", "slurmdbd"]).stdout.strip() != "active"
        assert lab.exec("beta-head", ["systemctl", "is-enabled", "slurmdbd"]).stdout.strip() == "disabled"
        clusters = lab.exec("alpha-head", ["sacctmgr", "-nP", "show", "clusters", "format=cluster,controlhost"]).stdout
        assert f"beta|{lab.head('beta').ip}" in clusters
        job = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
        assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == "beta-compute-1"
