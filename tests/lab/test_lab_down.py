"""`down` kills everything of its lab, whatever runs or enters there meanwhile, and nothing of anyone else."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest
from lab_helpers import lab_footprint, leftovers, release, submit, wait_until

from lab import ClusterSpec, Lab, LabError, system
from lab.core import DEFAULT_BASE, scoped_name

pytestmark = pytest.mark.lab

IMPOSTER = scoped_name("labdown")
NAME = f"{IMPOSTER}-x"  # with a dash: lab IMPOSTER + cluster 'x-solo' gives the same namespace names


@pytest.fixture
def small_lab(lab_host):
    the_lab = Lab(NAME, "10.250.76.0/24", [ClusterSpec("solo", computes=1)], root=DEFAULT_BASE / NAME)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


def test_down_leaves_nothing_even_with_stubborn_processes_a_job_and_commands_entering(small_lab):
    lab = small_lab
    # a process that ignores SIGTERM, detached from everything, and a job (slurmstepd + its sleep)
    lab.sh("solo-compute-1", "setsid sh -c 'trap \"\" TERM; exec sleep 1000' </dev/null >/dev/null 2>&1 &", check=True)
    job = submit(lab, "solo-head", "--wrap", "sleep 300")
    wait_until(lambda: "RUNNING" in lab.exec("solo-head", ["squeue", "-h", "-j", str(job), "-o", "%T"]).stdout,
               30, "job running")
    footprint = lab_footprint(lab)
    assert {system.netns_id(lab.netns(n.name)) for n in lab.nodes} <= footprint["ns_ids"]
    assert len(footprint["pids"]) >= 8  # 2 holders, 2 munged, slurmctld (+ slurmscriptd), slurmd, stepd, sleeps

    # while down runs: commands keep entering a node, and other namespaces are created all the time (as
    # other labs' holders are). The kernel reuses a freed namespace id at once: down must never kill those.
    stop = threading.Event()
    victims: list[int] = []
    exec_ended: list[str] = []

    def bystander() -> None:
        while not stop.is_set():
            if subprocess.run(["unshare", "--mount", "sleep", "0.05"], check=False).returncode == -signal.SIGKILL:
                victims.append(1)

    def entrant() -> None:
        while True:
            try:
                lab.exec("solo-compute-1", ["sleep", "30"], timeout=60)
            except LabError as e:  # the holder is gone: nothing can enter any more
                exec_ended.append(str(e))
                return

    threads = [threading.Thread(target=bystander) for _ in range(4)] + [threading.Thread(target=entrant)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: any(c == ["sleep", "30"] for c in _node_commands(footprint)), 30, "command entered")
        lab.down()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    try:
        assert not any(t.is_alive() for t in threads)
        assert exec_ended and "not running" in exec_ended[0]
        assert victims == [], "down killed processes of other namespaces"
        assert leftovers(lab, footprint) == []
    finally:
        release(footprint)
    lab.down()  # idempotent


def _node_commands(footprint: dict) -> list[list[str]]:
    """argv of every process living in the footprint's namespaces."""
    found = []
    for pid in system.processes_in(footprint["ns_ids"]):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1])
        except OSError:
            pass
    return found


def test_down_of_a_lab_whose_names_collide_touches_nothing_of_the_other(small_lab):
    lab = small_lab
    footprint = lab_footprint(lab)
    try:
        # lab IMPOSTER with cluster 'x-solo' has netns '<IMPOSTER>-x-solo-head' too: they are small_lab's
        imposter = Lab(IMPOSTER, "10.250.75.0/24", [ClusterSpec("x-solo", computes=1)], root=DEFAULT_BASE / IMPOSTER)
        assert [imposter.netns(n.name) for n in imposter.nodes] == [lab.netns(n.name) for n in lab.nodes]
        imposter.down()
        assert all(system.alive(*p) for p in footprint["pids"]), "another lab's down killed our processes"
        assert lab.exec("solo-head", ["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.split() == ["solo-compute-1", "idle"]
    finally:
        release(footprint)


def _in_own_mount_namespace(proc: subprocess.Popen) -> bool:
    return system.ns_link(proc.pid, "mnt") not in (None, system.ns_link("self", "mnt"))


def test_a_namespace_id_taken_before_its_namespace_died_never_matches_a_new_one(lab_host):
    """The kernel gives a freed namespace id to the very next namespace created anywhere: `down` matching
    ids it had read earlier killed other labs' brand-new holders and whatever kept entering them."""
    old = subprocess.Popen(["unshare", "--mount", "sleep", "600"])
    new = None
    try:
        wait_until(lambda: _in_own_mount_namespace(old), 10, "first namespace")
        with system.pinned_namespaces([], [(old.pid, system.proc_stat(old.pid)[1])]) as ids:
            assert ids == {system.ns_link(old.pid, "mnt")}  # never the host's network namespace
            old.kill()
            old.wait()
            new = subprocess.Popen(["unshare", "--mount", "sleep", "600"])
            wait_until(lambda: _in_own_mount_namespace(new), 10, "second namespace")
            assert system.ns_link(new.pid, "mnt") not in ids
            assert system.kill_all(ids) == 0 and new.poll() is None
    finally:
        for proc in (old, new):
            if proc:
                proc.kill()
                proc.wait()
