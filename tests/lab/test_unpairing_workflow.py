"""Unpairing on real daemons: a member leaves, the others go on; accounting keeps or drops the departed cluster.

alpha (accounting), beta and gamma are paired through the pairing workflow first. Deleting gamma's stack
(DELETE_IN_PROGRESS) unpairs it; CloudFormation then terminates its head node, which the lab stands for by
stopping gamma's slurmctld. Then beta opts out (manual unpairing with removeFromAccounting).
"""

from __future__ import annotations

import json

import boto3
import pytest

from lab import ClusterSpec
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
    clusters = [ClusterSpec("alpha", accounting=True), ClusterSpec("beta"), ClusterSpec("gamma")]
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
    lab.systemctl("gamma-head", "stop", "slurmctld")  # CloudFormation goes on to terminate gamma's head node

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert _touching("gamma", our_rules()) == []
    assert [r for r in our_rules() if gamma.security_group_id in (
        r["GroupId"], r.get("ReferencedGroupInfo", {}).get("GroupId"))] == []
    assert _touching("beta", our_rules()), "alpha <-> beta rules must stay"
    policy = json.loads(boto3.client("secretsmanager", region_name=cloud.region).get_resource_policy(
        SecretId="slurm-multicluster/hpc/munge-key")["ResourcePolicy"])
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


def test_opted_out_member_can_be_removed_from_accounting_with_its_associations_saved(federation):
    lab, cloud = federation
    assert "beta" in sacctmgr_clusters(lab, "alpha-head")
    lab.systemctl("beta-head", "stop", "slurmctld")  # an admin retiring beta: its slurmctld is down
    wait_until(lambda: sacctmgr_clusters(lab, "alpha-head").get("beta") == "", 60, "beta's slurmctld deregistered")

    result = cloud.unpair("beta", removeFromAccounting=True)

    assert result["status"] == "SUCCEEDED", result.get("cause")
    output = json.loads(result["output"])["accounting"]
    assert output["action"] == "removed" and output["changed"] is True
    assert "beta" not in sacctmgr_clusters(lab, "alpha-head")
    dump = lab.exec("alpha-head", ["cat", output["dump"]], check=True).stdout
    assert "Cluster - 'beta'" in dump  # `sacctmgr load` can bring its associations back
    assert _touching("beta", our_rules()) == []
    # alpha, alone now, still runs its own jobs and its accounting works.
    job = lab.exec("alpha-head", ["sbatch", "--parsable", "--wrap", "hostname"], check=True).stdout.strip()
    wait_until(lambda: "COMPLETED" in lab.exec("alpha-head", ["sacct", "-nXP", "-j", job, "--format=state"]).stdout,
               60, f"alpha job {job} COMPLETED in accounting")

    again = cloud.unpair("beta", removeFromAccounting=True)
    assert again["status"] == "SUCCEEDED", again.get("cause")
    assert json.loads(again["output"])["accounting"]["action"] == "none"  # not registered any more: nothing to do

