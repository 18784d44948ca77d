"""The drift sweep on real daemons: the real sweep and pairing ASL in moto, the real Lambdas, the real node
scripts on lab nodes through the SSM seam, real slurmctld/slurmd/slurmdbd/munged/MariaDB.

alpha (accounting) and beta are paired; then beta drifts as after `pcluster update-cluster` (its regenerated
slurm_parallelcluster.conf no longer points at the federation's slurmdbd) and one of our ingress rules is
revoked. A dry-run sweep must report exactly that and change nothing; a real sweep must repair it.

Metrics: Powertools writes them as EMF JSON lines on the Lambda's stdout (CloudWatch turns those log lines into
metrics; the function holds no cloudwatch:PutMetricData). In-process, that stdout is this process's, so the test
captures it and reads the DriftedClusters / RepairedClusters / FailedRepairs values CloudWatch would get.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import boto3
import pytest

from lab import ClusterSpec, Lab
from lab import cloud as aws_harness
from lab.bridge import LabCloud, lab_cloud
from lab_helpers import submit, wait_until
from pairing_helpers import (
    ACCOUNTING_CONF, ALPHA_TAGS, BETA_TAGS, daemon, events_queue, fresh_lab, our_rules, published,
    wait_job_completed_on,
)

pytestmark = pytest.mark.lab

TARGET_TAG = "slurm-multicluster:target-cluster"


def run_sweep(cloud: LabCloud, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Run the sweep state machine; (execution, report, metrics from the EMF lines its Lambdas printed)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        arn = aws_harness.start_execution(cloud.deployment, request, aws_harness.SWEEP_STATE_MACHINE)
        result = aws_harness.wait_for_execution(arn, cloud.region, timeout=600)
    assert result["status"] == "SUCCEEDED", result.get("cause")
    return result, json.loads(result["output"]), emf_metrics(buffer.getvalue())


def emf_metrics(stdout: str) -> dict[str, float]:
    """Metric name -> value of every Embedded Metric Format record in ``stdout``."""
    values: dict[str, float] = {}
    for line in stdout.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        record = json.loads(line)
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = record[metric["Name"]]
                values[metric["Name"]] = value[0] if isinstance(value, list) else value
    return values


def sweep_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The sweep's own metrics (the pairing runs publish theirs, e.g. PairingVerified, in the same output)."""
    return {name: value for name, value in metrics.items() if name in ("DriftedClusters", "RepairedClusters", "FailedRepairs")}


def slurmctld_starts(lab: Lab, node: str) -> int:
    """How many times slurmctld has started on the node (its log says so at each start)."""
    return lab.exec(node, ["cat", "/var/log/slurm/slurmctld.out"], check=True).stdout.count("slurmctld version")


def reachable(lab: Lab, source: str, target: str) -> None:
    """Poll until `sbatch -M target` works from source's head (slurmdbd lags a restarted slurmctld)."""
    wait_until(lambda: lab.exec(f"{source}-head", ["sbatch", f"--clusters={target}", "--test-only", "--wrap",
                                                   "true"]).returncode == 0, 60, f"{target} reachable from {source}")


def drift_reports(queue: str) -> list[dict[str, Any]]:
    return [e["detail"] for e in published(queue) if e["detail-type"] == "Slurm Federation Drift Report"]


@pytest.fixture
def paired_then_drifted(lab_host):
    """alpha and beta paired; then beta's config regenerated (and slurmctld restarted) and one rule revoked."""
    with fresh_lab("sweep", "10.250.82.0/24", [
        ClusterSpec("alpha", accounting=True, computes=1),
        ClusterSpec("beta", computes=1),
    ]) as lab, lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        generated_conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF], check=True).stdout
        pairing = cloud.run(cloud.event_for("beta"))
        assert pairing["status"] == "SUCCEEDED", pairing.get("cause")

        # `pcluster update-cluster` regenerates slurm_parallelcluster.conf (without our lines) and restarts slurmctld.
        lab.exec("beta-head", ["sh", "-c", f"cat > {ACCOUNTING_CONF}"], input=generated_conf, check=True)
        lab.systemctl("beta-head", "restart", "slurmctld")
        lab.wait_slurmctld("beta")
        # Someone removes the rule that lets alpha reach beta's slurmctld ports.
        revoked = next(r for r in our_rules() if {"Key": TARGET_TAG, "Value": "beta"} in r.get("Tags", [])
                       and r["FromPort"] == 6820)
        boto3.client("ec2", region_name=cloud.region).revoke_security_group_ingress(
            GroupId=revoked["GroupId"], SecurityGroupRuleIds=[revoked["SecurityGroupRuleId"]])
        yield cloud, generated_conf, revoked


def test_the_sweep_reports_and_repairs_drift(paired_then_drifted):
    cloud, drifted_conf, revoked = paired_then_drifted
    lab = cloud.lab
    queue = events_queue()
    alpha_ip = lab.head("alpha").ip
    # Slurm reports AccountingStorageHost=localhost when the regenerated file sets no accounting at all.
    expected_drift = ["1 missing ingress rule", f"accounting points at localhost not {alpha_ip}:6819"]
    rules_left = {r["SecurityGroupRuleId"] for r in our_rules()}
    daemons = {(n, u): daemon(lab, n, u) for n, u in (("beta-head", "slurmctld"), ("alpha-head", "slurmctld"),
                                                      ("beta-head", "munge"), ("beta-compute-1", "slurmd"))}

    # dryRun: the report lists beta's drift, alpha is in sync, and nothing changes anywhere.
    sweep, report, metrics = run_sweep(cloud, {"dryRun": True})
    assert report["checked"] == ["beta", "alpha"]
    assert report["inSync"] == ["alpha"]
    assert report["drifted"] == [{"cluster": "beta", "federation": "hpc", "drift": expected_drift}]
    assert report["repaired"] == [] and report["failed"] == []
    assert sweep_metrics(metrics) == {"DriftedClusters": 1.0, "RepairedClusters": 0.0, "FailedRepairs": 0.0}
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF], check=True).stdout == drifted_conf
    assert {r["SecurityGroupRuleId"] for r in our_rules()} == rules_left
    assert {(n, u): daemon(lab, n, u) for (n, u) in daemons} == daemons
    assert drift_reports(queue) == [{**report, "execution": sweep["name"]}]

    # For real: beta is repaired (its rule back, its accounting at alpha's slurmdbd), slurmctld restarted once.
    starts = slurmctld_starts(lab, "beta-head")
    sweep, report, metrics = run_sweep(cloud, {"dryRun": False})
    assert report["repaired"] == [{"cluster": "beta", "federation": "hpc", "drift": expected_drift}]
    assert report["drifted"] == report["repaired"]
    assert report["inSync"] == ["alpha"] and report["failed"] == []
    assert sweep_metrics(metrics) == {"DriftedClusters": 1.0, "RepairedClusters": 1.0, "FailedRepairs": 0.0}
    assert f"AccountingStorageHost={alpha_ip}" in lab.exec("beta-head", ["cat", ACCOUNTING_CONF], check=True).stdout
    restored = [r for r in our_rules() if (r["GroupId"], r["FromPort"], r["ToPort"], r["ReferencedGroupInfo"]["GroupId"])
                == (revoked["GroupId"], revoked["FromPort"], revoked["ToPort"], revoked["ReferencedGroupInfo"]["GroupId"])]
    assert len(restored) == 1
    assert len(our_rules()) == len(rules_left) + 1
    assert slurmctld_starts(lab, "beta-head") == starts + 1
    assert (daemon(lab, "beta-head", "munge"), daemon(lab, "beta-compute-1", "slurmd")) == (
        daemons[("beta-head", "munge")], daemons[("beta-compute-1", "slurmd")])  # the key did not drift
    assert drift_reports(queue) == [{**report, "execution": sweep["name"]}]

    # The federation works again in both directions.
    for source, target in (("beta", "alpha"), ("alpha", "beta")):
        reachable(lab, source, target)
        job = submit(lab, f"{source}-head", f"--clusters={target}", "--wrap", "hostname")
        assert wait_job_completed_on(lab, f"{source}-head", target, job)["NodeList"] == f"{target}-compute-1"
