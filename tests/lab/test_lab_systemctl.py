"""The stand-in systemctl on its own (no namespaces, no root): a unit table in a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from lab_helpers import REPO

from lab import system

pytestmark = pytest.mark.lab

NODECTL = REPO / "lab" / "nodectl.py"
IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
# A daemon with a helper child (as slurmctld has slurmscriptd): writes the child's pid, then sleeps.
WITH_CHILD = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
              " open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(600)")


@pytest.fixture
def systemctl(tmp_path):
    units = {
        "stubborn": {"exec": [sys.executable, "-c", IGNORES_TERM], "log": str(tmp_path / "log" / "stubborn.out"),
                     "stop_timeout": 0.3},
        "broken": {"exec": [sys.executable, "-c", "raise SystemExit(3)"], "log": str(tmp_path / "broken.out"),
                   "ready_socket": str(tmp_path / "never.sock")},
        "parent": {"exec": [sys.executable, "-c", WITH_CHILD, str(tmp_path / "parent.child")],
                   "log": str(tmp_path / "parent.out")},
        "keeper": {"exec": [sys.executable, "-c", WITH_CHILD, str(tmp_path / "keeper.child")],
                   "log": str(tmp_path / "keeper.out"), "kill_mode": "process"},
    }
    (tmp_path / "units.json").write_text(json.dumps({"node": "test", "units": units}))
    env = dict(os.environ, LAB_SYSTEMCTL_DIR=str(tmp_path))

    def run(*args):
        return subprocess.run([sys.executable, str(NODECTL), *args], env=env, capture_output=True, text=True,
                              timeout=30)

    yield run
    run("stop", "stubborn")
    run("stop", "parent")
    run("stop", "keeper")
    for name in ("parent", "keeper"):
        child = tmp_path / f"{name}.child"
        if child.exists():
            try:
                os.kill(int(child.read_text()), 9)
            except ProcessLookupError:
                pass


def main_pid(systemctl, unit):
    return int(systemctl("show", "-p", "MainPID", "--value", unit).stdout)


def test_stop_kills_a_daemon_that_ignores_sigterm(systemctl):
    assert systemctl("is-active", "stubborn").returncode == 3
    assert systemctl("start", "stubborn.service").returncode == 0
    assert systemctl("is-active", "stubborn").stdout == "active\n"
    pid = main_pid(systemctl, "stubborn")
    assert systemctl("start", "stubborn").returncode == 0 and main_pid(systemctl, "stubborn") == pid  # no-op
    t0 = time.monotonic()
    assert systemctl("stop", "stubborn").returncode == 0
    assert time.monotonic() - t0 < 5
    assert not system.alive(pid)
    cp = systemctl("is-active", "stubborn")
    assert (cp.returncode, cp.stdout) == (3, "inactive\n")


def test_restart_and_kill(systemctl):
    systemctl("start", "stubborn")
    first = main_pid(systemctl, "stubborn")
    assert systemctl("restart", "stubborn").returncode == 0
    second = main_pid(systemctl, "stubborn")
    assert second not in (0, first) and not system.alive(first)
    assert systemctl("kill", "--signal=KILL", "stubborn").returncode == 0
    deadline = time.monotonic() + 10
    while systemctl("is-active", "stubborn").stdout != "failed\n":
        assert time.monotonic() < deadline, "killed unit never reported failed"
        time.sleep(0.05)
    assert main_pid(systemctl, "stubborn") == 0


def test_kill_and_stop_reach_every_process_of_the_unit_unless_kill_mode_is_process(systemctl, tmp_path):
    """As systemd: KillMode=control-group (default) signals the unit's children too (slurmctld's slurmscriptd);
    KillMode=process (slurmd.service) signals the main process only, so jobs outlive a slurmd restart."""
    for unit in ("parent", "keeper"):
        assert systemctl("start", unit).returncode == 0
    children = {}
    for unit in ("parent", "keeper"):
        path = tmp_path / f"{unit}.child"
        deadline = time.monotonic() + 10
        while not (path.exists() and path.read_text()):
            assert time.monotonic() < deadline, f"{unit} never started its child"
            time.sleep(0.05)
        children[unit] = int(path.read_text())

    assert systemctl("kill", "--signal=KILL", "parent").returncode == 0
    assert systemctl("stop", "keeper").returncode == 0

    deadline = time.monotonic() + 10
    while system.alive(children["parent"]):
        assert time.monotonic() < deadline, "the killed unit's child survived"
        time.sleep(0.05)
    assert system.alive(children["keeper"])  # KillMode=process: left running


def test_a_unit_that_dies_while_starting_fails_the_start(systemctl):
    cp = systemctl("start", "broken")
    assert cp.returncode == 1 and "broken.service failed" in cp.stderr


def test_unknown_units_behave_like_systemd(systemctl):
    for verb, code in (("start", 5), ("restart", 5), ("stop", 5), ("kill", 5), ("enable", 1), ("is-enabled", 1)):
        cp = systemctl(verb, "slurmdbd")
        assert cp.returncode == code, (verb, cp)
        assert "slurmdbd.service" in cp.stderr
    assert "Unit slurmdbd.service not found." in systemctl("restart", "slurmdbd").stderr
    cp = systemctl("is-active", "slurmdbd")
    assert (cp.returncode, cp.stdout) == (4, "inactive\n")
    assert systemctl("show", "-p", "LoadState", "--value", "slurmdbd.service").stdout == "not-found\n"
    assert systemctl("show", "-p", "LoadState", "stubborn").stdout == "LoadState=loaded\n"


def test_enable_disable_and_unsupported_commands(systemctl):
    assert systemctl("is-enabled", "stubborn").stdout == "enabled\n"
    systemctl("disable", "stubborn")
    cp = systemctl("is-enabled", "stubborn")
    assert (cp.returncode, cp.stdout) == (1, "disabled\n")
    systemctl("enable", "stubborn")
    assert systemctl("is-enabled", "--quiet", "stubborn") .returncode == 0
    for args in (("daemon-reload",), ("status", "stubborn"), ("--user", "start", "stubborn")):
        cp = systemctl(*args)
        assert cp.returncode == 1 and "not implemented" in cp.stderr
