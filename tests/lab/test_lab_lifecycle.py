"""A second lab beside the first: crash recovery by `up`, and `down` leaving nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from lab_helpers import REPO, lab_footprint, leftovers, release, submit, wait_job_completed, wait_until

from lab import ClusterSpec, Lab, LabError, system
from lab.core import DEFAULT_BASE, remove_orphans, scoped_name

pytestmark = pytest.mark.lab


def test_second_lab_survives_a_crash_and_goes_down_cleanly(lab):
    name = scoped_name("labcrash")
    root = DEFAULT_BASE / name
    other = Lab(name, "10.250.78.0/24", [ClusterSpec("solo", accounting=True, computes=1)], root=root)
    other.up()
    crashed = lab_footprint(other)
    daemons = set(crashed["pids"])
    assert len(daemons) >= 7  # 2 holders, 2 munged, mariadbd, slurmdbd, slurmctld, slurmd

    # crash: the holders die, the daemons stay, the state file is stale
    for n in other.nodes:
        os.kill(other.holder_pid(n.name), signal.SIGKILL)
    wait_until(lambda: not any(system.alive(p) for p, _ in other._holders.values()), 10, "holders dead")
    with pytest.raises(Exception, match="not running"):
        Lab.load(name, root=root).exec("solo-head", ["true"])

    again = Lab(name, "10.250.78.0/24", [ClusterSpec("solo", accounting=True, computes=1)], root=root)
    lines = []
    again.up(progress=lines.append)
    assert any("removed a previous lab" in line for line in lines), lines
    assert not [p for p in daemons if system.alive(*p)], "daemons of the crashed lab survived up"
    job = submit(again, "solo-head", "--chdir=/tmp", "--wrap", "hostname")
    assert wait_job_completed(again, "solo-head", job)["NodeList"] == "solo-compute-1"

    # the first lab was never disturbed
    assert lab.node_states("beta")["beta-compute-1"] == "idle"

    footprint = lab_footprint(again)
    assert footprint["pids"]
    again.down()
    assert leftovers(again, footprint) == []
    assert leftovers(again, crashed) == []
    release(footprint)
    release(crashed)
    assert lab.node_states("alpha")["alpha-compute-1"] == "idle"
    again.down()  # idempotent


def test_interface_names_fit_and_derive_from_the_lab_name():
    long = Lab("a-rather-long-lab-name-x", "10.250.79.0/24", [ClusterSpec("c", computes=8)])
    names = [long.veth(n.name) for n in long.nodes]
    assert all(len(v) + 1 <= 15 for v in names)  # the peer end is '<veth>p' before it becomes eth0
    assert len(set(names)) == len(names) and all(v.startswith("a-ra") for v in names)
    assert Lab("lab").veth("beta-head") == "lab-21"


def test_a_root_the_nodes_cannot_see_is_refused():
    with pytest.raises(LabError, match="must not be under /tmp"):
        Lab("labx", root="/tmp/somewhere")


# Another run on this machine: its own run id, and killed before it could take its lab down.
KILLED_RUN = """
import os, signal
from lab import ClusterSpec, Lab
from lab.core import scoped_name
lab = Lab(scoped_name("orphan"), "10.250.74.0/24", [ClusterSpec("solo", computes=0)])
lab.up()
print(lab.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_labs_of_a_killed_run_are_removed_and_a_live_runs_labs_are_kept(lab):
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_RUN_ID", "LAB_OWNER")}
    cp = subprocess.run([sys.executable, "-c", KILLED_RUN], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == -signal.SIGKILL, cp.stderr
    name = cp.stdout.strip()
    assert name.startswith("orphan-") and name != scoped_name("orphan")  # another run's id, not ours
    orphan = Lab.load(name, root=DEFAULT_BASE / name)
    footprint = lab_footprint(orphan)
    try:
        assert footprint["pids"], "the killed run's lab should still be running"
        removed = remove_orphans(DEFAULT_BASE)
        assert name in removed and lab.name not in removed
        assert leftovers(orphan, footprint) == []
        assert not (DEFAULT_BASE / name).exists()
    finally:
        release(footprint)
    assert lab.node_states("beta")["beta-compute-1"] == "idle"  # this run's lab: untouched
    assert remove_orphans(DEFAULT_BASE) == []
