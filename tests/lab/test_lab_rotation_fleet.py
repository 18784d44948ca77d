"""A munge key rotation while ParallelCluster scales the fleets, on real daemons (issue 9): the real rotation ASL in
moto, the real Lambdas, the real node scripts on lab nodes through the SSM seam, real munged/slurmctld/slurmd.

alpha (accounting) and beta, two compute nodes each, are paired by the pairing workflow. Before the rotation
beta-compute-2 has no instance in EC2 yet (its daemons run the federation key, as a node that booted from the
shared dir); as beta's head node switches, ParallelCluster launches its instance, unknown to the rotation's plan.
Once staged (so in the plan), alpha-compute-2 is scaled down as ParallelCluster does it: Slurm powers it down
(SuspendProgram), its instance is terminated, its daemons are gone; slurmctld shows it idle~ (POWERED_DOWN), which
verify-member.sh accepts (a node left DOWN, as `scontrol update state=down` would leave it, fails its check).
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest

from lab import ClusterSpec, Lab
from lab import cloud as aws_harness
from lab.bridge import LabCloud, lab_cloud
from lab_helpers import sha256, submit, wait_until
from pairing_helpers import ALPHA_TAGS, BETA_TAGS, FEDERATION, KEY, SHARED_KEY, fresh_lab, wait_job_completed_on

pytestmark = pytest.mark.lab

LAUNCHED, SCALED_DOWN = "beta-compute-2", "alpha-compute-2"
RUNNING = ["alpha-head", "alpha-compute-1", "beta-head", "beta-compute-1", LAUNCHED]
# What ParallelCluster writes in slurm.conf for its dynamic nodes (power saving: slurm_suspend/slurm_resume);
# the lab's stand-ins do nothing, and a short SuspendTimeout lets POWERING_DOWN end within the test.
POWER_SAVING = "SuspendProgram=/bin/true\nResumeProgram=/bin/true\nSuspendTime=3600\nSuspendTimeout=5\n"


def power_saving(lab: Lab, cluster: str) -> None:
    """Configure the cluster's slurmctld for power saving, as ParallelCluster's slurm.conf is."""
    lab.exec(f"{cluster}-head", ["sh", "-c", f"printf '{POWER_SAVING}' >> /opt/slurm/etc/slurm.conf"], check=True)
    lab.systemctl(f"{cluster}-head", "restart", "slurmctld")
    lab.wait_slurmctld(cluster)
    lab.wait_idle([n.name for n in lab.computes(cluster)])


def node_state(lab: Lab, node: str) -> str:
    cluster = lab.node(node).cluster
    out = lab.exec(f"{cluster}-head", ["sinfo", "-h", "-N", "-n", node, "-o", "%T"]).stdout.split()
    return out[0] if out else ""


def powered_down(lab: Lab, node: str, timeout: float = 30) -> str:
    """The node's state once POWERING_DOWN has ended (SuspendTimeout), or whatever it is at the deadline."""
    deadline = time.monotonic() + timeout
    while (state := node_state(lab, node)).endswith("%") and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def reports_on(history: list[dict[str, Any]], instance_id: str) -> list[Any]:
    """Everything the rotation's Lambdas returned about one instance (their outputs' values under its id)."""
    found: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == instance_id:
                    found.append(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for event in history:
        output = event.get("lambdaFunctionSucceededEventDetails", {}).get("output")
        if output:
            walk(json.loads(output))
    return found


@pytest.fixture(scope="module")
def paired(lab_host) -> Iterator[tuple[Lab, LabCloud]]:
    clusters = [ClusterSpec("alpha", accounting=True, computes=2), ClusterSpec("beta", computes=2)]
    with fresh_lab("rotfleet", "10.250.91.0/24", clusters) as lab:
        power_saving(lab, "alpha")
        with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS},
                       parameters={"VerifyDeadlineSeconds": "45"}) as cloud:
            result = cloud.run(cloud.event_for("beta"))
            assert result["status"] == "SUCCEEDED", f"pairing beta: {result.get('cause')}"
            yield lab, cloud


@pytest.fixture(scope="module")
def rotated(paired) -> dict[str, Any]:
    lab, cloud = paired
    before = {n: sha256(lab, n, KEY) for n in RUNNING}
    # beta-compute-2 runs the federation key but EC2 does not list it yet: its instance is launched during the switch
    not_yet_launched = cloud.terminate_node(LAUNCHED)
    scaled_down_instance = next(i for i, n in cloud.node_of_instance.items()
                                if n == SCALED_DOWN and i in cloud.clusters["alpha"].compute_instance_ids)
    changed: dict[str, Any] = {}
    heads = {cloud.clusters[c].head_instance_id: c for c in ("alpha", "beta")}

    def switching(node: str) -> str | None:
        """The cluster whose head node's switch (install-munge-key.sh --from-staged) was sent to ``node``."""
        for record in list(cloud.commands):
            cluster = heads.get(record["InstanceId"])
            if cluster == "beta" and cluster == lab.node(node).cluster and "launched" not in changed \
                    and record["DocumentName"].endswith("InstallMungeKey") \
                    and record["Parameters"].get("FromStaged") == ["true"]:
                return cluster
        return None

    run_on_node = lab.sh

    def sent(node: str, document: str) -> bool:
        instances = {i for i, n in cloud.node_of_instance.items() if n == node}
        return any(r["InstanceId"] in instances and r["DocumentName"].endswith(document) for r in cloud.commands)

    def scale_during_the_rotation(node: str, text: str, **kw: Any):
        cluster = switching(node)
        done = run_on_node(node, text, **kw)
        if node == SCALED_DOWN and "terminated" not in changed and sent(node, "StageMungeKey"):
            # staged, then idle past ScaledownIdletime: Slurm powers it down (SuspendProgram), ParallelCluster
            # terminates its instance, its daemons die with it; it is in the plan and gone before the switch
            lab.exec("alpha-head", ["scontrol", "update", f"nodename={SCALED_DOWN}", "state=power_down",
                                    "reason=scaled-down"], check=True)
            wait_until(lambda: node_state(lab, SCALED_DOWN) == "idle%", 30, f"{SCALED_DOWN} powering down")
            changed["terminated"] = cloud.terminate_node(SCALED_DOWN)
            lab.systemctl(SCALED_DOWN, "stop", "slurmd", "munge")
            wait_until(lambda: node_state(lab, SCALED_DOWN) == "idle~", 30, f"{SCALED_DOWN} powered down")
            changed["at:scale-down"] = time.strftime("%T")
        if cluster == "beta":
            # the head's switch has run (the shared dir has the new key), SSM does not report it yet: the instance
            # of beta-compute-2 is launched before the switch reads the fleet again
            changed["launched"] = cloud.launch_compute_node(LAUNCHED)
            changed["at:beta"] = time.strftime("%T")
        return done

    commands_before = len(cloud.commands)
    lab.sh = scale_during_the_rotation
    started = time.monotonic()
    try:
        result = cloud.rotate(FEDERATION)
    finally:
        del lab.sh  # back to the class's method
    seconds = time.monotonic() - started
    output = json.loads(result.get("output") or "{}")
    after = {f"{n}:{KEY}": sha256(lab, n, KEY) for n in RUNNING}
    after.update({f"{c}-head:{SHARED_KEY}": sha256(lab, f"{c}-head", SHARED_KEY) for c in ("alpha", "beta")})
    history = aws_harness.history(result["executionArn"], cloud.region)
    return {"result": result, "output": output, "seconds": seconds, "before": before, "after": after,
            "changed": changed, "not_yet_launched": not_yet_launched, "scaled_down_instance": scaled_down_instance,
            "commands": cloud.commands[commands_before:], "history": history,
            "scaled_down_state": powered_down(lab, SCALED_DOWN)}


def test_nodes_launched_and_scaled_down_during_a_rotation_end_correct_on_real_daemons(rotated, paired):
    lab, cloud = paired
    result, changed = rotated["result"], rotated["changed"]
    print(f"rotation: {result['status']} in {rotated['seconds']:.1f}s; fleet changed at {changed}")
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert {"launched", "terminated"} <= set(changed)
    new_sha = rotated["output"]["sha256"]
    assert new_sha != rotated["before"]["alpha-head"] and set(rotated["before"].values()) == {rotated["before"]["alpha-head"]}
    # every running node, the one launched during the switch included, runs the new key
    assert rotated["after"] == {k: new_sha for k in rotated["after"]}
    launched = [(c["DocumentName"].rsplit("-", 1)[1], c["Parameters"]) for c in rotated["commands"]
                if c["InstanceId"] == changed["launched"]]
    assert [name for name, _ in launched] == ["InstallMungeKey", "ReportMungeKey"], launched
    assert launched[0][1]["FromSharedDir"] == ["true"]
    assert not [c for c in rotated["commands"] if c["InstanceId"] == rotated["not_yet_launched"]]
    # the scaled-down node: nothing failed on it, the switch reported it gone, slurmctld shows it powered down
    assert changed["terminated"] == rotated["scaled_down_instance"]
    reported = reports_on(rotated["history"], changed["terminated"])
    assert {"gone": True} in reported, reported  # what SwitchMember said of it
    assert not [r for r in reported if r.get("error") or r.get("ok") is False], reported
    assert not [c for c in rotated["commands"] if c["InstanceId"] == changed["terminated"]
                and c["DocumentName"].endswith(("InstallMungeKey", "ReportMungeKey"))]
    assert rotated["scaled_down_state"] == "idle~"


def test_a_job_from_alpha_runs_on_the_node_launched_during_the_rotation(rotated, paired):
    lab, _ = paired
    assert rotated["result"]["status"] == "SUCCEEDED", rotated["result"].get("cause")
    wait_until(lambda: lab.exec("alpha-head", ["sbatch", "--clusters=beta", "--test-only", "--wrap", "true"])
               .returncode == 0, 60, "beta reachable with sbatch -M from alpha")
    job = submit(lab, "alpha-head", "--clusters=beta", f"--nodelist={LAUNCHED}", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "alpha-head", "beta", job)["NodeList"] == LAUNCHED
