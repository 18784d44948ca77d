"""Two clusters created at the same moment both end up paired (real daemons): beta's and gamma's CREATE_COMPLETE
reach the EventBridge rule together, both pairings start at once, the federation lease lets one change the nodes
while the other waits (FederationBusy, retried), then the other pairs against a federation that now includes the
first. Real ASL in moto, real Lambdas, real node scripts, real slurmctld/slurmd/slurmdbd/munged/MariaDB."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from lab import ClusterSpec, Lab
from lab import cloud as aws_harness
from lab.bridge import LabCloud, lab_cloud
from lab_helpers import sha256, submit, wait_until
from pairing_helpers import ALPHA_TAGS, BETA_TAGS, KEY, fresh_lab, sacctmgr_clusters, wait_job_completed_on

pytestmark = pytest.mark.lab

NEW_MEMBERS = ("beta", "gamma")


@dataclass
class Execution:
    """One finished pairing execution and its history."""

    result: dict[str, Any]
    history: list[dict[str, Any]]

    def entered(self, state: str) -> datetime:
        return next(e["timestamp"] for e in self.history
                    if e.get("stateEnteredEventDetails", {}).get("name") == state)

    def exited(self, state: str) -> datetime:
        return next(e["timestamp"] for e in self.history
                    if e.get("stateExitedEventDetails", {}).get("name") == state)

    def node_changing_window(self) -> tuple[datetime, datetime]:
        """From the first rule added to the lease given back: everything that changes a node lies inside."""
        return self.entered("AuthorizeIngress"), self.exited("ReleaseFederationLease")

    def lease_refusals(self) -> int:
        """How many times AcquireFederationLease failed with FederationBusy (each one retried)."""
        return sum(1 for e in self.history if e["type"] == "LambdaFunctionFailed"
                   and e["lambdaFunctionFailedEventDetails"]["error"] == "FederationBusy")


@dataclass
class Simultaneous:
    lab: Lab
    cloud: LabCloud
    executions: dict[str, Execution]


@pytest.fixture(scope="module")
def created_together(lab_host):
    """alpha (accounting) exists; beta and gamma are created tagged at the same moment: both events are routed
    before either execution is waited for."""
    with fresh_lab("paircc", "10.250.81.0/24", [
        ClusterSpec("alpha", accounting=True, computes=1),
        ClusterSpec("beta", computes=1),
        ClusterSpec("gamma", computes=1),
    ]) as lab, lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS, "gamma": BETA_TAGS}) as cloud:
        started = {}
        for cluster in NEW_MEMBERS:
            started[cluster] = aws_harness.route_event(cloud.deployment, cloud.event_for(cluster))
            assert started[cluster] is not None, f"no rule of the template matches {cluster}'s CREATE_COMPLETE"
        executions = {}
        for cluster, arn in started.items():
            result = aws_harness.wait_for_execution(arn, cloud.region, timeout=900)
            executions[cluster] = Execution(result, aws_harness.history(arn, cloud.region))
        yield Simultaneous(lab, cloud, executions)


def test_both_pairings_succeed(created_together):
    for cluster, execution in created_together.executions.items():
        assert execution.result["status"] == "SUCCEEDED", f"{cluster}: {execution.result.get('cause')}"


def test_one_pairing_changed_nodes_while_the_other_waited_for_the_lease(created_together):
    beta, gamma = (created_together.executions[c] for c in NEW_MEMBERS)
    (beta_start, beta_end), (gamma_start, gamma_end) = beta.node_changing_window(), gamma.node_changing_window()
    assert beta_end < gamma_start or gamma_end < beta_start, "the node-changing steps of both pairings overlapped"
    waited = gamma if beta_end < gamma_start else beta
    assert waited.lease_refusals() >= 1  # the later one was refused (FederationBusy) and retried, not failed


def test_accounting_lists_every_cluster_with_a_control_host(created_together):
    lab = created_together.lab
    clusters = sacctmgr_clusters(lab, "alpha-head")
    for cluster in ("alpha", *NEW_MEMBERS):
        assert clusters.get(cluster) == lab.head(cluster).ip, clusters


def test_jobs_run_between_the_two_new_members_and_on_the_accounting_cluster(created_together):
    lab = created_together.lab
    directions = [("beta", "gamma"), ("gamma", "beta"), ("beta", "alpha"), ("gamma", "alpha")]
    for src, dst in directions:
        # -M resolves the cluster through slurmdbd, which lags a slurmctld that restarted moments ago
        wait_until(lambda src=src, dst=dst: lab.exec(f"{src}-head", [
            "sbatch", f"--clusters={dst}", "--test-only", "--wrap", "true"]).returncode == 0,
            60, f"{dst} reachable with sbatch -M from {src}")
    submitted = {(src, dst): submit(lab, f"{src}-head", f"--clusters={dst}", "--wrap", "hostname")
                 for src, dst in directions}
    for (src, dst), job in submitted.items():
        assert wait_job_completed_on(lab, f"{src}-head", dst, job)["NodeList"] == f"{dst}-compute-1", f"{src}->{dst}"


def test_both_new_members_run_the_federation_munge_key(created_together):
    lab = created_together.lab
    federation = sha256(lab, "alpha-head", KEY)
    assert {c: sha256(lab, f"{c}-head", KEY) for c in NEW_MEMBERS} == {c: federation for c in NEW_MEMBERS}
