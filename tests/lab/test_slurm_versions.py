"""The Slurm releases ParallelCluster ships, on real daemons: each release on its own (22.05 host, 24.11 Debian 13,
26.05 sid), and mixed federations as A/B upgrades leave them (slurmdbd first; SchedMD's release window).

Per release, one lab of three clusters: the node scripts read every setting right; beta is paired through the
real workflow and runs jobs both ways; a key rotation across alpha and beta succeeds; gamma opts in, its pairing
fails verification and is rolled back to exactly what it had (on 24.11+ that includes slurmctld's cluster id file);
gamma, registered with alpha's slurmdbd meanwhile, is removed from accounting (dumped first)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab import ClusterSpec, Lab, roots
from lab.bridge import lab_cloud
from lab_helpers import REPO, sha256, submit, wait_job_completed
from pairing_helpers import (
    ACCOUNTING_CONF, ALPHA_TAGS, BETA_TAGS, FEDERATION, KEY, SHARED_KEY, daemon, fresh_lab, jobs_in_every_direction,
    opt_in, our_rules, run_logged, sacctmgr_clusters, wait_job_completed_on,
)

pytestmark = pytest.mark.lab

SCRIPTS = REPO / "functions" / "shared" / "slurm_multicluster" / "node_scripts"
CLUSTER_ID_FILE = "/var/spool/slurm.state/clustername"
RELEASES = list(roots.RELEASES)  # 22.05, 24.11, 26.05


def node_script(lab: Lab, node: str, script: str, *args: str) -> dict[str, Any]:
    """Run a node script on a node as an admin would (common.sh beside it) and return its JSON result line."""
    install = "set -e; d=$(mktemp -d); cat > $d/common.sh; echo $d"
    tmp = lab.sh(node, install, input=(SCRIPTS / "common.sh").read_text(), check=True).stdout.strip()
    lab.sh(node, f"cat > {tmp}/{script}", input=(SCRIPTS / script).read_text(), check=True)
    done = lab.exec(node, ["bash", f"{tmp}/{script}", *args], timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cluster_id_file(lab: Lab, node: str) -> str:
    return lab.exec(node, ["cat", CLUSTER_ID_FILE], check=True).stdout.strip()


def member_state(lab: Lab, cluster: str) -> dict[str, Any]:
    """What a rollback must give back: munge keys (head, compute, shared copy), accounting config, cluster id file."""
    head = f"{cluster}-head"
    return {"keys": {n: sha256(lab, n, KEY) for n in (head, f"{cluster}-compute-1")},
            "shared": sha256(lab, head, SHARED_KEY),
            "conf": lab.exec(head, ["cat", ACCOUNTING_CONF], check=True).stdout,
            "id_file": cluster_id_file(lab, head)}


@dataclass
class ReleaseRun:
    """Everything observed on one release's lab (measured in the fixture, asserted by the tests)."""

    release: str
    lab: Lab
    discovered: dict[str, dict[str, Any]] = field(default_factory=dict)
    root: dict[str, Any] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)
    id_files: dict[str, str] = field(default_factory=dict)
    rollback: dict[str, Any] = field(default_factory=dict)
    rotation: dict[str, Any] = field(default_factory=dict)
    removal: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module", params=RELEASES, ids=lambda r: f"slurm-{r}")
def release_run(request, lab_host):
    release = request.param
    tag = release.replace(".", "")
    clusters = [ClusterSpec("alpha", accounting=True, slurm=release), ClusterSpec("beta", slurm=release),
                ClusterSpec("gamma", slurm=release)]
    with fresh_lab(f"ver{tag}", f"10.250.{90 + RELEASES.index(release)}.0/24", clusters) as lab:
        run = ReleaseRun(release, lab)
        root = lab.slurm_root("alpha")
        run.root = roots.describe(root) if root else {}
        for node in ("alpha-head", "beta-head"):
            run.discovered[node] = node_script(lab, node, "discover-slurm.sh")
        run.id_files["beta:before"] = cluster_id_file(lab, "beta-head")
        with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS},
                       parameters={"VerifyDeadlineSeconds": "15"}) as cloud:
            result, _ = run_logged(cloud, cloud.event_for("beta"))
            run.pairing = result
            if result["status"] == "SUCCEEDED":
                run.id_files["beta:after"] = cluster_id_file(lab, "beta-head")
                run.jobs = jobs_in_every_direction(lab, ["alpha", "beta"])
                run.jobs["beta:own"] = wait_job_completed(lab, "beta-head", submit(lab, "beta-head", "--wrap", "hostname"), 60)

            if run.pairing["status"] == "SUCCEEDED":
                old = sha256(lab, "alpha-head", KEY)
                result = cloud.rotate(FEDERATION)
                run.rotation = {"result": result, "old": old,
                                "keys": {n: sha256(lab, n, KEY) for n in
                                         ("alpha-head", "alpha-compute-1", "beta-head", "beta-compute-1")}}
                if result["status"] == "SUCCEEDED":
                    run.rotation["jobs"] = jobs_in_every_direction(lab, ["alpha", "beta"])
            # gamma opts in later; an admin drained its only compute node, so verification fails and everything is rolled back
            gamma_before = member_state(lab, "gamma")
            rules_before = sorted(r["SecurityGroupRuleId"] for r in our_rules())
            opt_in(cloud, "gamma")
            lab.exec("gamma-head", ["scontrol", "update", "nodename=gamma-compute-1", "state=down", "reason=maint"],
                     check=True)
            result, _ = run_logged(cloud, cloud.event_for("gamma"))
            run.rollback = {
                "result": result, "before": gamma_before, "rules_before": rules_before,
                "after": member_state(lab, "gamma"),
                "rules": sorted(r["SecurityGroupRuleId"] for r in our_rules()),
            }
            lab.exec("gamma-head", ["scontrol", "update", "nodename=gamma-compute-1", "state=resume"], check=True)
            lab.wait_idle(["gamma-compute-1"], timeout=60)
            run.rollback["own_job"] = wait_job_completed(
                lab, "gamma-head", submit(lab, "gamma-head", "--wrap", "hostname"), 60)

        # gamma registered with alpha's slurmdbd during its failed pairing: an admin removes it from accounting
        run.removal = {"listed_before": "gamma" in sacctmgr_clusters(lab, "alpha-head"),
                       "result": node_script(lab, "alpha-head", "remove-from-accounting.sh", "--cluster", "gamma",
                                             "--backup-id", "remove-gamma"),
                       "listed_after": "gamma" in sacctmgr_clusters(lab, "alpha-head"),
                       "again": node_script(lab, "alpha-head", "remove-from-accounting.sh", "--cluster", "gamma",
                                            "--backup-id", "remove-gamma")}

        yield run


def test_each_release_runs_the_slurm_and_munge_it_claims(release_run):
    run = release_run
    reported = run.discovered["alpha-head"]
    assert reported["slurmVersion"].startswith(run.release + "."), reported
    assert reported["slurmdbdVersion"].startswith(run.release + "."), reported
    if run.root:  # a Debian root: what its packages installed, recorded when the root was built
        assert reported["slurmVersion"] == run.root["slurm"]
        assert reported["mungeVersion"] == run.root["munge"]


def test_discover_slurm_reads_every_setting_on_each_release(release_run):
    alpha, beta = release_run.discovered["alpha-head"], release_run.discovered["beta-head"]
    assert alpha["ok"] and beta["ok"]
    assert (alpha["clusterName"], beta["clusterName"]) == ("alpha", "beta")
    assert alpha["slurmctldPort"] == beta["slurmctldPort"] == "6820-6829"
    assert alpha["accountingStorageType"] == "accounting_storage/slurmdbd"
    assert alpha["dbdPort"] == 6819 and alpha["slurmdbdActive"] is True
    assert any(entry.startswith("alpha=") for entry in alpha["registeredClusters"])
    # a cluster created without a Database: 24.11+ print "(null)" where 22.05 printed accounting_storage/none
    assert beta["accountingStorageType"] in (None, "", "accounting_storage/none")
    assert beta["slurmdbdUnit"] is False
    assert re.fullmatch(r"[0-9a-f]{64}", beta["mungeKeySha256"])


def test_pairing_succeeds_and_runs_jobs_both_ways_on_each_release(release_run):
    run = release_run
    assert run.pairing["status"] == "SUCCEEDED", run.pairing.get("cause")
    assert run.jobs["alpha->beta"]["NodeList"] == "beta-compute-1"
    assert run.jobs["beta->alpha"]["NodeList"] == "alpha-compute-1"
    assert run.jobs["beta:own"]["JobState"] == "COMPLETED"


def test_the_member_takes_the_federation_slurmdbds_cluster_id(release_run):
    before, after = release_run.id_files["beta:before"], release_run.id_files.get("beta:after")
    if release_run.release == "22.05":  # 22.05 keeps only the name
        assert before == after == "beta"
        return
    # 24.11+: "name|id"; the federation's slurmdbd registered beta anew, so beta runs under the id it gave
    assert re.fullmatch(r"beta\|\d+", before) and re.fullmatch(r"beta\|\d+", after or ""), (before, after)
    assert after != before


def test_a_failed_pairing_rolls_back_to_exactly_what_the_member_had_on_each_release(release_run):
    rollback = release_run.rollback
    assert rollback["result"]["status"] == "FAILED"
    assert rollback["result"]["error"] == "VerifyPairingFailed", rollback["result"].get("cause")
    assert rollback["after"] == rollback["before"]  # keys, shared key, accounting config, cluster id file
    assert rollback["rules"] == rollback["rules_before"]  # what gamma's pairing added is revoked again
    assert rollback["own_job"]["JobState"] == "COMPLETED"


def test_rotation_gives_every_node_a_new_key_and_jobs_still_cross_on_each_release(release_run):
    rotation = release_run.rotation
    assert rotation, "no rotation: the pairing failed"
    assert rotation["result"]["status"] == "SUCCEEDED", rotation["result"].get("cause")
    keys = set(rotation["keys"].values())
    assert len(keys) == 1 and rotation["old"] not in keys
    assert rotation["jobs"]["alpha->beta"]["JobState"] == rotation["jobs"]["beta->alpha"]["JobState"] == "COMPLETED"


def test_remove_from_accounting_dumps_then_deletes_on_each_release(release_run):
    removal = release_run.removal
    assert removal["listed_before"] is True
    assert removal["result"]["ok"] and removal["result"]["changed"] and removal["result"]["wasRegistered"], removal
    assert removal["result"]["dump"].endswith("sacctmgr-gamma.cfg")
    assert removal["listed_after"] is False
    assert removal["again"]["ok"] and removal["again"]["changed"] is False  # idempotent


# ---------------------------------------------------------------- mixed releases


@pytest.fixture(scope="module")
def upgraded_accounting(lab_host):
    """An A/B upgrade where slurmdbd went first: the accounting cluster on 26.05, the member still on 24.11."""
    with fresh_lab("mixab", "10.250.95.0/24", [ClusterSpec("alpha", accounting=True, slurm="26.05"),
                                               ClusterSpec("beta", slurm="24.11", logins=1)]) as lab, \
            lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
        result, _ = run_logged(cloud, cloud.event_for("beta"))
        jobs = jobs_in_every_direction(lab, ["alpha", "beta"]) if result["status"] == "SUCCEEDED" else {}
        if jobs:
            job = submit(lab, "beta-login-1", "--clusters=alpha", "--wrap", "hostname")
            jobs["beta-login-1->alpha"] = wait_job_completed_on(lab, "beta-login-1", "alpha", job)
        yield result, jobs


def test_a_2411_member_pairs_with_a_2605_slurmdbd_and_jobs_cross_both_ways(upgraded_accounting):
    result, jobs = upgraded_accounting
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert jobs["alpha->beta"]["NodeList"] == "beta-compute-1"
    assert jobs["beta->alpha"]["NodeList"] == "alpha-compute-1"
    assert jobs["beta-login-1->alpha"]["NodeList"] == "alpha-compute-1"


@pytest.fixture(scope="module")
def outside_the_window(lab_host):
    """Accounting on 24.11; beta still on 22.05 (four major releases older), gamma already on 26.05 (newer)."""
    with fresh_lab("mixwin", "10.250.96.0/24", [ClusterSpec("alpha", accounting=True, slurm="24.11"),
                                                ClusterSpec("beta", slurm="22.05"),
                                                ClusterSpec("gamma", slurm="26.05")]) as lab, \
            lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS, "gamma": BETA_TAGS}) as cloud:
        yield lab, cloud


def _untouched(lab: Lab, cluster: str) -> dict[str, str]:
    head = f"{cluster}-head"
    return {"key": sha256(lab, head, KEY), "conf": lab.exec(head, ["cat", ACCOUNTING_CONF], check=True).stdout,
            "slurmctld": daemon(lab, head, "slurmctld"), "munge": daemon(lab, head, "munge")}


@pytest.mark.parametrize("member, says", [
    ("beta", r"beta cannot use the federation's slurmdbd on alpha: slurmctld 22\.05\.\d+ is 4 major releases older "
             r"than slurmdbd 24\.11\.\d+; slurmdbd 24\.11 accepts at most 3 older major releases"),
    ("gamma", r"gamma cannot use the federation's slurmdbd on alpha: slurmctld 26\.05\.\d+ is newer than slurmdbd "
              r"24\.11\.\d+"),
])
def test_a_member_outside_schedmds_release_window_is_refused_before_any_change(outside_the_window, member, says):
    lab, cloud = outside_the_window
    before = _untouched(lab, member)
    result, _ = run_logged(cloud, cloud.event_for(member))
    assert result["status"] == "FAILED"
    assert result["error"] == "CheckPrerequisitesFailed"
    assert re.search(says, result["cause"]), result["cause"]
    assert _untouched(lab, member) == before
    assert our_rules() == []
