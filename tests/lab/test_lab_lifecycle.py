"""A second lab beside the first: crash recovery by `up`, and `down` leaving nothing behind."""

from __future__ import annotations

import os
import signal

import pytest
from lab_helpers import lab_footprint, leftovers, release, submit, wait_job_completed, wait_until

from lab import ClusterSpec, Lab, LabError, system
from lab.core import DEFAULT_BASE

pytestmark = pytest.mark.lab


def test_second_lab_survives_a_crash_and_goes_down_cleanly(lab):
    root = DEFAULT_BASE / "labcrash"
    other = Lab("labcrash", "10.250.78.0/24", [ClusterSpec("solo", accounting=True, computes=1)], root=root)
    other.up()
    crashed = lab_footprint(other)
    daemons = set(crashed["pids"])
    assert len(daemons) >= 7  # 2 holders, 2 munged, mariadbd, slurmdbd, slurmctld, slurmd

    # crash: the holders die, the daemons stay, the state file is stale
    for n in other.nodes:
        os.kill(other.holder_pid(n.name), signal.SIGKILL)
    wait_until(lambda: not any(system.alive(p) for p, _ in other._holders.values()), 10, "holders dead")
    with pytest.raises(Exception, match="not running"):
        Lab.load("labcrash", root=root).exec("solo-head", ["true"])

    again = Lab("labcrash", "10.250.78.0/24", [ClusterSpec("solo", accounting=True, computes=1)], root=root)
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
