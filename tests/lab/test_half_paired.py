"""A half-paired cluster, on real daemons: its head node already runs the federation key, but the shared copies its
compute and login nodes boot from, and those nodes themselves, run another one. That is the state the blog's manual
procedure leaves (the key copied to the head node only), and what a compute node booted from a stale shared copy
drifts into. The plan must see it from every key location's fingerprint (never the key), and the pairing and the
sweep must repair exactly that: the shared copies and the nodes, without restarting the head node's munge.
"""

from __future__ import annotations

import json

import pytest
from test_lab_drift_sweep import run_sweep

from lab import ClusterSpec, Lab
from lab.bridge import lab_cloud
from lab_helpers import sha256, submit
from pairing_helpers import ALPHA_TAGS, BETA_TAGS, KEY, SHARED_KEY, daemon, fresh_lab, run_logged, wait_job_completed_on

pytestmark = pytest.mark.lab

LOGIN_SHARED_KEY = "/opt/parallelcluster/shared_login_nodes/.munge/.munge.key"
BETA_NODES = ("beta-head", "beta-compute-1", "beta-login-1")


def key_locations(lab: Lab) -> dict[str, str]:
    """Fingerprint of every place beta keeps a munge key: each node's own key and the head's shared copies."""
    found = {node: sha256(lab, node, KEY) for node in BETA_NODES}
    found |= {path: sha256(lab, "beta-head", path) for path in (SHARED_KEY, LOGIN_SHARED_KEY)}
    return found


def copy_key_to_head_only(lab: Lab) -> None:
    """The blog's step: alpha's key onto beta's head node, munge and slurmctld restarted there, nothing else."""
    key = lab.exec("alpha-head", ["base64", "-w0", KEY], check=True).stdout  # kept in memory, never printed
    lab.exec("beta-head", ["sh", "-c", f"base64 -d > {KEY}.new && chown munge:munge {KEY}.new && chmod 0400 {KEY}.new "
                           f"&& mv {KEY}.new {KEY}"], input=key, check=True)
    lab.systemctl("beta-head", "restart", "munge", "slurmctld")
    lab.wait_slurmctld("beta")


def job_from_alpha_runs_on_beta(lab: Lab) -> None:
    job = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == "beta-compute-1"


@pytest.fixture
def half_paired(lab_host):
    with fresh_lab("halfpair", "10.250.85.0/24", [
        ClusterSpec("alpha", accounting=True, computes=1),
        ClusterSpec("beta", computes=1, logins=1),
    ]) as lab:
        old = sha256(lab, "beta-head", KEY)
        copy_key_to_head_only(lab)
        federation_key = sha256(lab, "alpha-head", KEY)
        assert key_locations(lab) == {"beta-head": federation_key, "beta-compute-1": old, "beta-login-1": old,
                                      SHARED_KEY: old, LOGIN_SHARED_KEY: old}
        yield lab, federation_key


def test_the_plan_sees_a_half_paired_cluster_and_the_pairing_repairs_it_without_touching_the_heads_munge(half_paired):
    lab, federation_key = half_paired
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        dry, _ = run_logged(cloud, {"stackName": "beta", "region": cloud.region, "dryRun": True})
        assert dry["status"] == "SUCCEEDED", dry.get("cause")
        key_plan = json.loads(dry["output"])["mungeKey"]
        assert key_plan["headKeyDiffers"] is False and key_plan["installOnHead"] is True
        assert sorted(key_plan["staleSharedCopies"]) == sorted([SHARED_KEY, LOGIN_SHARED_KEY])
        beta = cloud.clusters["beta"]
        assert sorted(key_plan["installOnInstances"]) == sorted(beta.compute_instance_ids + beta.login_instance_ids)

        head_munge = daemon(lab, "beta-head", "munge")
        pairing = cloud.run(cloud.event_for("beta"))
        assert pairing["status"] == "SUCCEEDED", pairing.get("cause")
        assert set(key_locations(lab).values()) == {federation_key}
        assert daemon(lab, "beta-head", "munge") == head_munge  # the head already ran the key: left running
        assert lab.wait_idle(["beta-compute-1"], 60)
        job_from_alpha_runs_on_beta(lab)


def test_the_sweep_reports_a_half_paired_member_and_repairs_it(half_paired):
    lab, federation_key = half_paired
    with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        locations = key_locations(lab)
        _, report, _ = run_sweep(cloud, {"dryRun": True})
        beta = next(d for d in report["drifted"] if d["cluster"] == "beta")
        assert "munge key differs" not in beta["drift"]
        assert "2 compute/login nodes on another munge key" in beta["drift"]
        assert any(item.startswith("shared munge key copies not on the federation key") for item in beta["drift"])
        assert key_locations(lab) == locations  # a dry run changes nothing

        _, report, _ = run_sweep(cloud, {"dryRun": False})
        assert "beta" in [d["cluster"] for d in report["repaired"]] and report["failed"] == []
        assert set(key_locations(lab).values()) == {federation_key}
        assert lab.wait_idle(["beta-compute-1"], 60)
        job_from_alpha_runs_on_beta(lab)
