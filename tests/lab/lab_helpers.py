"""Helpers shared by the lab tests (a module of its own so that no test imports a conftest)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from lab import Lab, LabError, system
from lab.core import scoped_name

REPO = Path(__file__).resolve().parents[2]
LAB_NAME = scoped_name("labtest")  # this run's own: another run on the machine never tears it down
LAB_SUBNET = "10.250.77.0/24"
TOOLS = ("unshare", "nsenter", "ip", "setsid", "setpriv", "munged", "slurmctld", "slurmd", "slurmdbd",
         "mariadbd", "mariadb-install-db", "sbatch")


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Poll check() until it returns something truthy; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout}s (last: {value!r})")
        time.sleep(interval)


def submit(lab: Lab, node: str, *sbatch_args: str) -> int:
    """sbatch on a node; returns the job id."""
    cp = lab.exec(node, ["sbatch", "--parsable", *sbatch_args])
    assert cp.returncode == 0, cp.stderr
    return int(cp.stdout.strip().split(";")[0])


def job_fields(lab: Lab, node: str, job_id: int) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, NodeList, ExitCode, ...)."""
    cp = lab.exec(node, ["scontrol", "show", "job", str(job_id)])
    return dict(re.findall(r"(\w+)=(\S*)", cp.stdout))


def wait_job_completed(lab: Lab, node: str, job_id: int, timeout: float = 30) -> dict[str, str]:
    def check():
        fields = job_fields(lab, node, job_id)
        state = fields.get("JobState")
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
            pytest.fail(f"job {job_id} ended {state}: {fields}")
        return fields if state == "COMPLETED" else None

    return wait_until(check, timeout, f"job {job_id} COMPLETED")


def sha256(lab: Lab, node: str, path: str) -> str:
    cp = lab.exec(node, ["sha256sum", path], check=True)
    return cp.stdout.split()[0]


def lab_footprint(the_lab: Lab) -> dict:
    """What a running lab holds on the host: namespace ids, (pid, start time) of the processes living in
    them, netns names. The namespaces are held open until release(footprint): the kernel gives a freed
    namespace id to the next namespace created anywhere, so an id says nothing once its namespace is gone."""
    holders = []
    for n in the_lab.nodes:
        try:
            pid = the_lab.holder_pid(n.name)
        except LabError:
            continue
        holders.append((pid, system.proc_stat(pid)[1]))
    pins = contextlib.ExitStack()
    ns_ids = pins.enter_context(system.pinned_namespaces([the_lab.netns(n.name) for n in the_lab.nodes], holders))
    bridge = pins.enter_context(system.pinned_namespaces([the_lab.bridge_ns], []))
    pids = {(pid, st[1]) for pid in system.processes_in(ns_ids) if (st := system.proc_stat(pid))}
    return {"ns_ids": ns_ids, "bridge_id": next(iter(bridge), None), "pids": pids, "pins": pins,
            "netns": [the_lab.netns(n.name) for n in the_lab.nodes] + [the_lab.bridge_ns]}


def release(footprint: dict) -> None:
    """Close the namespaces a footprint holds open."""
    footprint["pins"].close()


def leftovers(the_lab: Lab, footprint: dict) -> list[str]:
    """Everything of a lab still present after down (empty list when clean). Zombies waiting for the
    sandbox's PID 1 to reap them count as gone: they hold no namespace, mount or socket."""
    found = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"netns {ns}" for ns in footprint["netns"] if ns in listed]
    found += [f"process {system.describe(pid)}" for pid, start in footprint["pids"] if system.alive(pid, start)]
    found += [f"process {system.describe(pid)} in lab namespaces" for pid in system.processes_in(footprint["ns_ids"])]
    ids = footprint["ns_ids"] | {footprint["bridge_id"]}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "mountinfo").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if str(the_lab.root) in line or f"/run/netns/{the_lab.name}-" in line or any(i and i in line for i in ids):
                found.append(f"mount in pid {entry.name}: {line}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"host interface {m}" for m in re.findall(rf"\d+: ({re.escape(the_lab.tag)}-\w+)", links)]
    return found
