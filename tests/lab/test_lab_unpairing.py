"""Unpairing on real daemons: a member leaves, the others go on; accounting keeps or drops the departed cluster.

alpha (accounting), beta (created with a slurmdbd of its own, which its pairing stops) and gamma are paired
through the pairing workflow first. Deleting gamma's stack (DELETE_IN_PROGRESS) unpairs it; CloudFormation then
terminates its head node, which the lab stands for by stopping gamma's slurmctld. Then beta opts out (its
federation tag removed) and goes back to its own slurmdbd; a manual unpairing finally removes it from the
federation's accounting.

A second lab, with login nodes, shows the paths users submit from closing again: beta opts out of a deployment
that removes departed members from accounting, and neither alpha's login node nor a job on alpha's compute node
can `sbatch -M beta` any more (nor beta's towards alpha), while both clusters go on running their own jobs.
"""

from __future__ import annotations

import json
import re

import boto3
import pytest

from lab import ClusterSpec, Lab
from lab import cloud as cloud_module
from lab.bridge import LabCloud, lab_cloud
from lab.parallelcluster import FEDERATION_TAG
from lab_helpers import submit, wait_job_completed, wait_until
from pairing_helpers import (
    ALPHA_TAGS, BETA_TAGS, eni_groups, events_queue, fresh_lab, jobs_in_every_direction, our_rules, published, run_logged,
    sacctmgr_clusters, wait_job_completed_on,
)

pytestmark = pytest.mark.lab


def _touching(cluster: str, rules: list[dict]) -> list[dict]:
    names = {"slurm-multicluster:source-cluster", "slurm-multicluster:target-cluster"}
    return [r for r in rules if any(t["Key"] in names and t["Value"] == cluster for t in r.get("Tags", []))]


@pytest.fixture(scope="module")
def federation(lab_host):
    clusters = [ClusterSpec("alpha", accounting=True), ClusterSpec("beta", accounting=True), ClusterSpec("gamma")]
    with fresh_lab("unpair", "10.250.83.0/24", clusters) as lab:
        tags = {"alpha": ALPHA_TAGS, "beta": BETA_TAGS, "gamma": BETA_TAGS}
        with lab_cloud(lab, tags) as cloud:
            for name in ("beta", "gamma"):
                result = cloud.run(cloud.event_for(name))
                assert result["status"] == "SUCCEEDED", result.get("cause")
            jobs_in_every_direction(lab, ["alpha", "beta", "gamma"])
            yield lab, cloud


def test_deleted_member_is_unpaired_and_the_others_still_submit_to_each_other(federation):
    lab, cloud = federation
    gamma = cloud.clusters["gamma"]
    assert _touching("gamma", our_rules()), "gamma must be paired first"
    queue = events_queue()

    result, logs = run_logged(cloud, cloud.event_for("gamma", "DELETE_IN_PROGRESS"))
    # CloudFormation goes on: it terminates gamma's head node and deletes the stack.
    lab.systemctl("gamma-head", "stop", "slurmctld")
    boto3.client("cloudformation", region_name=cloud.region).delete_stack(StackName="gamma")

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert _touching("gamma", our_rules()) == []
    assert [r for r in our_rules() if gamma.security_group_id in (
        r["GroupId"], r.get("ReferencedGroupInfo", {}).get("GroupId"))] == []
    assert _touching("beta", our_rules()), "alpha <-> beta rules must stay"
    policy = json.loads(boto3.client("secretsmanager", region_name=cloud.region).get_resource_policy(
        SecretId="slurm-multicluster/default/hpc/munge-key")["ResourcePolicy"])
    readers = [arn for s in policy["Statement"] for arn in s["Principal"]["AWS"]]
    assert gamma.head_role_arn not in readers and cloud.clusters["beta"].head_role_arn in readers
    # History kept (the default): gamma stays in accounting, marked by an empty ControlHost once its slurmctld is gone.
    wait_until(lambda: sacctmgr_clusters(lab, "alpha-head").get("gamma") == "", 60,
               "gamma listed in accounting with no ControlHost")
    assert json.loads(result["output"])["accounting"]["action"] == "kept"
    jobs = jobs_in_every_direction(lab, ["alpha", "beta"])
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values())
    unpaired = [e["detail"] for e in published(queue) if e["detail-type"] == "Slurm Cluster Unpaired"]
    assert [(e["cluster"], e["trigger"], e["accounting"]) for e in unpaired] == [("gamma", "DELETE_IN_PROGRESS", "kept")]


def test_member_that_opts_out_goes_back_to_its_own_slurmdbd_and_can_be_removed_from_accounting(federation):
    lab, cloud = federation
    beta = cloud.clusters["beta"]
    assert lab.exec("beta-head", ["systemctl", "is-active", "slurmdbd"]).stdout.strip() != "active"  # paired
    queue = events_queue()
    boto3.client("cloudformation", region_name=cloud.region).update_stack(
        StackName="beta", UsePreviousTemplate=True,
        Tags=[{"Key": k, "Value": v} for k, v in {"parallelcluster:version": "3.11.1",
                                                   "parallelcluster:cluster-name": "beta"}.items()])

    started = cloud_module.route_event_to_all(cloud.deployment, cloud_module.tag_change_event(
        beta.stack_id, cloud.region, ["slurm-multicluster:federation"], {"parallelcluster:version": "3.11.1"}))
    result = cloud_module.wait_for_execution(started[cloud_module.UNPAIRING_STATE_MACHINE], cloud.region, timeout=600)

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert _touching("beta", our_rules()) == []
    output = json.loads(result["output"])
    assert output["secretAccess"]["readers"] == [cloud.clusters["alpha"].head_role_arn]
    detach = output["detach"]
    assert detach["action"] == "own accounting" and detach["startedSlurmdbd"] is True
    assert lab.exec("beta-head", ["systemctl", "is-active", "slurmdbd"]).stdout.strip() == "active"
    assert lab.exec("beta-head", ["systemctl", "is-enabled", "slurmdbd"]).stdout.strip() == "enabled"
    live = lab.exec("beta-head", ["scontrol", "show", "config"], check=True).stdout
    assert re.search(rf"AccountingStorageHost\s*=\s*{re.escape(lab.head('beta').ip)}\n", live)
    # beta's jobs are accounted in its own slurmdbd again; the federation's shows beta disconnected.
    wait_until(lambda: sacctmgr_clusters(lab, "beta-head").get("beta") == lab.head("beta").ip, 60,
               "beta registered with its own slurmdbd")
    job = lab.exec("beta-head", ["sbatch", "--parsable", "--wrap", "hostname"], check=True).stdout.strip()
    wait_until(lambda: "COMPLETED" in lab.exec("beta-head", ["sacct", "-nXP", "-j", job, "--format=state"]).stdout,
               60, f"beta job {job} COMPLETED in beta's own accounting")
    wait_until(lambda: sacctmgr_clusters(lab, "alpha-head").get("beta") == "", 60, "beta gone from alpha's slurmdbd")
    unpaired = [e["detail"] for e in published(queue)
                if e["detail-type"] == "Slurm Cluster Unpaired" and e["detail"]["cluster"] == "beta"]
    assert [(e["trigger"], e["ownAccounting"]) for e in unpaired] == [("tag-removed", "own accounting")]
    assert "rotate" in unpaired[0]["keyAdvice"]

    # Neither tagged nor holding rules of ours now: the admin names the federation to finish the removal.
    removed = cloud.unpair("beta", removeFromAccounting=True, federation="hpc")

    assert removed["status"] == "SUCCEEDED", removed.get("cause")
    output = json.loads(removed["output"])
    assert output["detach"]["changed"] is False  # already on its own slurmdbd: nothing restarted
    assert output["accounting"]["action"] == "removed" and output["accounting"]["changed"] is True
    assert "beta" not in sacctmgr_clusters(lab, "alpha-head")
    dump = lab.exec("alpha-head", ["cat", output["accounting"]["dump"]], check=True).stdout
    assert "Cluster - 'beta'" in dump  # `sacctmgr load` can bring its associations back
    # alpha, alone now, still runs its own jobs and its accounting works.
    job = lab.exec("alpha-head", ["sbatch", "--parsable", "--wrap", "hostname"], check=True).stdout.strip()
    wait_until(lambda: "COMPLETED" in lab.exec("alpha-head", ["sacct", "-nXP", "-j", job, "--format=state"]).stdout,
               60, f"alpha job {job} COMPLETED in accounting")

    again = cloud.unpair("beta", removeFromAccounting=True, federation="hpc")
    assert again["status"] == "SUCCEEDED", again.get("cause")
    assert json.loads(again["output"])["accounting"]["action"] == "none"  # not registered any more: nothing to do


# ---------------------------------------------------------------- after an opt-out, users' paths to the peer are closed
def _opt_out(cloud: LabCloud, cluster: str) -> dict:
    """The admin removes the federation tag from a running cluster's stack; the tag change starts the unpairing."""
    mirror = cloud.clusters[cluster]
    cloudformation = boto3.client("cloudformation", region_name=mirror.region)
    stack = cloudformation.describe_stacks(StackName=mirror.stack_id)["Stacks"][0]
    tags = {t["Key"]: t["Value"] for t in stack["Tags"]}
    kept = {k: v for k, v in tags.items() if k != FEDERATION_TAG}
    cloudformation.update_stack(StackName=mirror.stack_id, UsePreviousTemplate=True,
                                Tags=[{"Key": k, "Value": v} for k, v in kept.items()])
    started = cloud_module.route_event_to_all(cloud.deployment, cloud_module.tag_change_event(
        mirror.stack_id, mirror.region, [FEDERATION_TAG], kept))
    return cloud_module.wait_for_execution(started[cloud_module.UNPAIRING_STATE_MACHINE], cloud.region, timeout=600)


def _sbatch_from_login(lab: Lab, src: str, dst: str):
    return lab.exec(f"{src}-login-1", ["sbatch", "--parsable", f"--clusters={dst}", "--wrap", "hostname"])


def _sbatch_from_a_job(lab: Lab, src: str, dst: str) -> tuple[int, str]:
    """`sbatch -M dst` run by a job on src's compute node (the job submitted from src's login node): the inner
    sbatch's exit code and the job's output (sbatch's stdout and stderr). The job itself always completes."""
    outer = submit(lab, f"{src}-login-1", "--chdir=/tmp", "--output=/tmp/outer-%j.out", "--wrap",
                   f"sbatch --parsable --clusters={dst} --wrap hostname; echo sbatch-exit=$?")
    assert wait_job_completed(lab, f"{src}-head", outer, timeout=60)["NodeList"] == f"{src}-compute-1"
    output = lab.exec(f"{src}-compute-1", ["cat", f"/tmp/outer-{outer}.out"], check=True).stdout
    exit_code = re.search(r"sbatch-exit=(\d+)", output)
    assert exit_code, output
    return int(exit_code.group(1)), output


def _runs_its_own_job(lab: Lab, cluster: str) -> None:
    job = submit(lab, f"{cluster}-login-1", "--wrap", "hostname")
    assert wait_job_completed(lab, f"{cluster}-head", job, timeout=60)["NodeList"] == f"{cluster}-compute-1"


@pytest.fixture(scope="module")
def paired_with_logins(lab_host):
    """alpha (accounting) and beta (with a slurmdbd of its own), each with a login node, paired through the
    workflow in a deployment whose unpairing removes a departed member from the federation's accounting."""
    clusters = [ClusterSpec("alpha", accounting=True, computes=1, logins=1),
                ClusterSpec("beta", accounting=True, computes=1, logins=1)]
    with fresh_lab("unpairpaths", "10.250.86.0/24", clusters) as lab, \
            lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS},
                      parameters={"UnpairRemovesAccounting": "true"}) as cloud:
        result = cloud.run(cloud.event_for("beta"))
        assert result["status"] == "SUCCEEDED", result.get("cause")
        yield lab, cloud


def test_after_unpairing_login_nodes_and_running_jobs_can_no_longer_submit_to_the_departed_cluster(paired_with_logins):
    lab, cloud = paired_with_logins
    beta = cloud.clusters["beta"]
    beta_groups = {beta.security_group_id, beta.login_security_group_id}
    beta_instances = [beta.head_instance_id, *beta.compute_instance_ids, *beta.login_instance_ids]
    # Paired: every path is open (the same probes must fail afterwards, so a refusal is the unpairing's doing).
    for src, dst in (("alpha", "beta"), ("beta", "alpha")):
        wait_until(lambda src=src, dst=dst: lab.exec(f"{src}-login-1", [
            "sbatch", f"--clusters={dst}", "--test-only", "--wrap", "true"]).returncode == 0,
            60, f"{dst} reachable with sbatch -M from {src}'s login node")
        submitted = _sbatch_from_login(lab, src, dst)
        assert submitted.returncode == 0, submitted.stderr
        wait_job_completed_on(lab, f"{src}-login-1", dst, int(submitted.stdout.strip().split(";")[0]))
        exit_code, output = _sbatch_from_a_job(lab, src, dst)
        assert exit_code == 0 and f";{dst}" in output, output
    assert set(sacctmgr_clusters(lab, "alpha-login-1")) >= {"alpha", "beta"}
    assert [r for r in our_rules() if r["GroupId"] == beta.security_group_id], "rules into beta's head node group"
    federation_group = eni_groups(beta.head_instance_id, cloud.region) - {beta.security_group_id}
    assert len(federation_group) == 1, federation_group
    [federation_group] = federation_group

    result = _opt_out(cloud, "beta")

    assert result["status"] == "SUCCEEDED", result.get("cause")
    output = json.loads(result["output"])
    assert output["detach"]["action"] == "own accounting"  # beta keeps running, on its own slurmdbd
    assert output["accounting"]["action"] == "removed"
    # beta is no longer in alpha's accounting, so Slurm itself refuses -M beta: `-M` resolves a cluster there.
    # "No cluster ... known by database" is that refusal; a member kept in accounting but disconnected (or down)
    # gets only "'beta' can't be reached now, or it is an invalid entry for --cluster".
    assert "beta" not in sacctmgr_clusters(lab, "alpha-login-1")
    assert sacctmgr_clusters(lab, "alpha-login-1").get("alpha") == lab.head("alpha").ip
    refused = _sbatch_from_login(lab, "alpha", "beta")
    assert refused.returncode != 0, refused.stdout
    assert "No cluster 'beta' known by database" in refused.stderr, refused.stderr
    exit_code, job_output = _sbatch_from_a_job(lab, "alpha", "beta")
    assert exit_code != 0 and "No cluster 'beta' known by database" in job_output, job_output
    # And the reverse: beta's login node and jobs now resolve clusters in beta's own slurmdbd, which has no alpha.
    refused = _sbatch_from_login(lab, "beta", "alpha")
    assert refused.returncode != 0, refused.stdout
    assert "No cluster 'alpha' known by database" in refused.stderr, refused.stderr
    exit_code, job_output = _sbatch_from_a_job(lab, "beta", "alpha")
    assert exit_code != 0 and "No cluster 'alpha' known by database" in job_output, job_output
    # Not a dead peer: both clusters run their own jobs, submitted from their login nodes.
    _runs_its_own_job(lab, "alpha")
    _runs_its_own_job(lab, "beta")
    # The network side in moto. The lab does not enforce security groups on real traffic, so "closed" is shown
    # by Slurm refusing above plus these rules and attachments being gone.
    assert _touching("beta", our_rules()) == []
    assert [r for r in our_rules() if r["GroupId"] in beta_groups
            or r.get("ReferencedGroupInfo", {}).get("GroupId") in beta_groups] == []
    assert {i: federation_group in eni_groups(i, cloud.region) for i in beta_instances} == dict.fromkeys(
        beta_instances, False)
    assert beta.security_group_id in eni_groups(beta.head_instance_id, cloud.region)  # its own group stays
