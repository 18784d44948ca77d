"""A temp dir shaped like a ParallelCluster head node, for the node-script tests (see conftest.py).

The tree has /opt/slurm/etc (slurm.conf with ParallelCluster's two includes, slurm_parallelcluster.conf,
slurmdbd.conf), /etc/munge/munge.key, the NFS-shared /opt/parallelcluster/shared/.munge and a backup root.
Daemons are stand-ins (standins.py) except munged, which is real.

Every script run goes through ``Node.run``, which fails the test if any munge key created by a test (raw,
base64 or hex) shows up in the script's stdout or stderr or on a recorded command line. Tests compare keys
by sha256 only, so a failing assertion never prints key bytes either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "functions" / "shared" / "slurm_multicluster" / "node_scripts"
STANDINS = Path(__file__).resolve().parent / "standins.py"
# The bash that runs the scripts: NODE_SCRIPTS_BASH=/path/to/bash-4.4 runs the suite on the oldest bash a supported
# OS ships (RHEL/Rocky 8: 4.4.20; see node_scripts/README.md "Where they run").
BASH = os.environ.get("NODE_SCRIPTS_BASH", "bash")
VENV_BIN = Path(sys.executable).parent
REGION = "us-east-1"

SLURM_CONF = """\
# slurm.conf as ParallelCluster writes it (abridged)
ClusterName=alpha
SlurmctldPort=6820-6829
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurm.state
SlurmUser=slurm
ProctrackType=proctrack/cgroup
SchedulerType=sched/backfill
include slurm_parallelcluster.conf
include pcluster/custom_slurm_settings_include_file_slurm.conf
"""

PC_CONF_WITH_ACCOUNTING = """\
SlurmctldHost=ip-10-0-0-10(10.0.0.10)
SuspendTime=600
ResumeTimeout=1800
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=ip-10-0-0-10
AccountingStoragePort=6819
AccountingStorageUser=slurm
JobAcctGatherType=jobacct_gather/cgroup
"""

PC_CONF_WITHOUT_ACCOUNTING = """\
SlurmctldHost=ip-10-0-0-10(10.0.0.10)
SuspendTime=600
ResumeTimeout=1800
"""

SLURMDBD_CONF = """\
AuthType=auth/munge
DbdHost=ip-10-0-0-10
SlurmUser=slurm
StorageType=accounting_storage/mysql
include slurm_parallelcluster_slurmdbd.conf
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    """A file's sha256 (tests compare key files this way, so a failing assert shows no key bytes)."""
    return sha256(path.read_bytes())


class Opaque(bytes):
    """Bytes that hold key material: their repr (in pytest's assertion messages) is a fingerprint only."""

    def __repr__(self) -> str:
        return f"<{len(self)} secret bytes sha256={sha256(self)[:16]}...>"

    __str__ = __repr__


# Every key a test creates; no script output may contain any of them in any encoding.
KEYS_IN_PLAY: list[bytes] = []


def new_key(size: int = 1024) -> Opaque:
    key = Opaque(os.urandom(size))
    KEYS_IN_PLAY.append(key)
    return key


def key_leaks(text: bytes) -> list[str]:
    """Which encodings of a test key appear in ``text`` (names only, never the bytes)."""
    found = []
    for key in KEYS_IN_PLAY:
        b64 = base64.b64encode(key)
        forms = {
            "raw key bytes": key[:24],
            "base64 of the key": b64[:32],
            "base64 of the key (middle)": b64[len(b64) // 2 : len(b64) // 2 + 32],
            "wrapped base64 of the key": base64.encodebytes(key)[:32],
            "hex of the key": key.hex()[:32].encode(),
        }
        found += [name for name, needle in forms.items() if needle in text]
    return found


@dataclass
class Result:
    """One script run: exit status, output, and the parsed JSON last line."""

    script: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"{self.script} printed nothing on stdout; stderr: {self.stderr}"
        return json.loads(lines[-1])


class Node:
    """A temp dir shaped like a ParallelCluster head node, with stand-in daemons and a real munged."""

    def __init__(self, root: Path, extra_env: dict[str, str]):
        self.root = root
        self.etc = root / "opt/slurm/etc"
        self.key_file = root / "etc/munge/munge.key"
        self.shared_dir = root / "opt/parallelcluster/shared/.munge"
        self.login_shared_dir = root / "opt/parallelcluster/shared_login_nodes/.munge"
        self.backup_root = root / "var/lib/slurm-multicluster/backups"
        self.state = root / "state"
        self.bin = root / "bin"
        self.munge_run = root / "run/munge"
        self.fleet_config = root / "etc/parallelcluster/slurm_plugin/fleet-config.json"
        self.env = {
            "PATH": f"{self.bin}:{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "TMPDIR": str(root / "tmp"),
            "SLURM_ETC": str(self.etc),
            "MUNGE_KEY_FILE": str(self.key_file),
            "SHARED_MUNGE_DIRS": f"{self.shared_dir} {self.login_shared_dir}",
            "BACKUP_ROOT": str(self.backup_root),
            "FLEET_CONFIG_FILE": str(self.fleet_config),
            "MUNGE_SOCKET": str(self.munge_run / "munge.socket.2"),
            "NODE_STATE": str(self.state),
            "REAL_AWS": str(VENV_BIN / "aws"),
            **extra_env,
        }

    # --- building the node

    def build(self, pc_conf: str = PC_CONF_WITH_ACCOUNTING, key: bytes | None = None) -> Node:
        munge = pwd.getpwnam("munge")
        for d in (self.etc / "pcluster", self.state, self.bin, self.root / "tmp"):
            d.mkdir(parents=True)
        (self.etc / "slurm.conf").write_text(SLURM_CONF)
        (self.etc / "slurm_parallelcluster.conf").write_text(pc_conf)
        (self.etc / "pcluster/custom_slurm_settings_include_file_slurm.conf").write_text("")
        (self.etc / "slurmdbd.conf").write_text(SLURMDBD_CONF)
        (self.etc / "slurm_parallelcluster_slurmdbd.conf").write_text("DbdPort=6819\nStorageHost=localhost\n")
        for path in self.etc.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.key_file.parent.mkdir(parents=True)
        os.chown(self.key_file.parent, munge.pw_uid, munge.pw_gid)
        self.key_file.parent.chmod(0o700)
        self.write_key(self.key_file, key if key is not None else new_key(), 0o600, munge.pw_uid, munge.pw_gid)
        # ParallelCluster shares the key with compute nodes: root, dir 0700, file 0600
        self.shared_dir.mkdir(parents=True)
        self.shared_dir.chmod(0o700)
        shutil.copy2(self.key_file, self.shared_dir / ".munge.key")
        (self.shared_dir / ".munge.key").chmod(0o600)
        self.munge_run.mkdir(parents=True)
        os.chown(self.munge_run, munge.pw_uid, munge.pw_gid)
        self.munge_run.chmod(0o755)
        for command in ("systemctl", "scontrol", "sacctmgr", "sbatch", "sinfo", "slurmdbd", "aws"):
            wrapper = self.bin / command
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDINS}" {command} "$@"\n')
            wrapper.chmod(0o755)
        self.save_state(
            {
                "slurm_version": "22.05.8",
                "units": {
                    "munge": {"kind": "munged", "enabled": True},
                    "slurmctld": {"state": "inactive", "enabled": True},
                    "slurmdbd": {"state": "active", "enabled": True},
                },
                "clusters": {},
                "submit_ok": [],
                "nodes": [["alpha-st-c5-1", "idle"], ["alpha-dy-c5-1", "idle~"]],
            }
        )
        self.standin("systemctl", "start", "munge")
        self.standin("systemctl", "start", "slurmctld")
        self.clear_calls()
        return self

    def write_key(self, path: Path, key: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
        path.write_bytes(key)
        os.chown(path, uid, gid)
        path.chmod(mode)

    # --- stand-in state

    def load_state(self) -> dict:
        return json.loads((self.state / "node.json").read_text())

    def save_state(self, state: dict) -> None:
        (self.state / "node.json").write_text(json.dumps(state, indent=1))

    def update_state(self, **changes) -> None:
        state = self.load_state()
        state.update(changes)
        self.save_state(state)

    def set_unit(self, name: str, **fields) -> None:
        state = self.load_state()
        state["units"].setdefault(name, {}).update(fields)
        self.save_state(state)

    def remove_unit(self, name: str) -> None:
        state = self.load_state()
        state["units"].pop(name, None)
        self.save_state(state)

    def unit_state(self, name: str) -> str:
        return subprocess.run(
            [str(self.bin / "systemctl"), "is-active", name], env=self.env, capture_output=True, text=True
        ).stdout.strip()

    def standin(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True)

    def calls(self) -> list[list[str]]:
        log = self.state / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def clear_calls(self) -> None:
        (self.state / "calls.log").write_text("")

    def systemctl_actions(self) -> list[tuple[str, str]]:
        """(verb, unit) of every systemctl call that changes a unit, in order."""
        changing = {"start", "stop", "restart", "enable", "disable", "kill"}
        return [(c[1], c[-1]) for c in self.calls() if c[0] == "systemctl" and len(c) > 2 and c[1] in changing]

    # --- inspecting the tree

    def snapshot(self) -> dict[str, tuple[str, int, int, int]]:
        """sha256, mode, uid, gid of every file outside the stand-in state and munged's runtime dir.

        The node lock file (BACKUP_ROOT/.lock) is left out: taking the lock changes nothing on the node.
        """
        files = {}
        for path in sorted(self.root.rglob("*")):
            if self.state in path.parents or self.munge_run in path.parents or path.is_dir():
                continue
            if path == self.backup_root / ".lock":
                continue
            st = path.lstat()
            files[str(path.relative_to(self.root))] = (sha256(path.read_bytes()), st.st_mode & 0o7777, st.st_uid, st.st_gid)
        return files

    def manifest(self, backup_id: str) -> list[str]:
        path = self.backup_root / backup_id / "manifest"
        return path.read_text().splitlines() if path.exists() else []

    def backup_copy(self, backup_id: str, path: Path) -> Path:
        return self.backup_root / backup_id / "files" / str(path).lstrip("/")

    # --- running the scripts

    def run(self, script: str, *args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 120) -> Result:
        proc = subprocess.run(
            [BASH, str(SCRIPTS / script), *args],
            env={**self.env, **(env or {})},
            input=(stdin or "").encode(),
            capture_output=True,
            timeout=timeout,
        )
        calls = (self.state / "calls.log").read_bytes() if (self.state / "calls.log").exists() else b""
        for stream, data in (("stdout", proc.stdout), ("stderr", proc.stderr), ("a command line", calls)):
            leaks = key_leaks(data)
            if leaks:
                pytest.fail(f"{script} printed key material on {stream}: {', '.join(leaks)}", pytrace=False)
        return Result(script, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def munge_roundtrip_ok(self) -> bool:
        sock = self.env["MUNGE_SOCKET"]
        encoded = subprocess.run(["munge", "-n", "-S", sock], capture_output=True, text=True)
        if encoded.returncode:
            return False
        return subprocess.run(["unmunge", "-S", sock], input=encoded.stdout, capture_output=True, text=True).returncode == 0

    def stop_munged(self) -> None:
        try:
            pid = int((self.state / "munged.pid").read_text())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return
            if stat[stat.rindex(")") + 2] in "ZX":
                return
            time.sleep(0.02)


def node_root() -> Path:
    # munged (as user munge) must traverse the tree: not under pytest's 0700 tmp dir
    root = Path(tempfile.mkdtemp(prefix="node-scripts-", dir="/tmp"))
    root.chmod(0o711)
    return root
