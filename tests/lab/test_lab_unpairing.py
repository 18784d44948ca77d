"""Unpairing on real daemons: a member leaves, the others go on; accounting keeps or drops the departed cluster.

alpha (accounting), beta (created with a slurmdbd of its own, which its pairing stops) and gamma are paired
through the pairing workflow first. Deleting gamma's stack (DELETE_IN_PROGRESS) unpairs it; CloudFormation then
terminates its head node, which the lab stands for by stopping gamma's slurmctld. Then beta opts out (its
federation tag removed) and goes back to its own slurmdbd; a manual unpairing finally removes it from the
federation's accounting.
"""

from __future__ import annotations

import json
import re

import boto3
import pytest

from lab import ClusterSpec
from lab import cloud as cloud_module
from lab.bridge import lab_cloud
from lab_helpers import wait_until
from pairing_helpers import (
    ALPHA_TAGS, BETA_TAGS, events_queue, fresh_lab, jobs_in_every_direction, our_rules, published, run_logged,
    sacctmgr_clusters,
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
