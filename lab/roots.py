"""Debian roots holding newer Slurm releases, built once with debootstrap and cached outside the repo.

The host (Debian 12) runs Slurm 22.05. A lab node of another release runs inside a root of the Debian suite
that ships it (an overlay over the cached root per node, then pivot_root: see system.HOLDER_SCRIPT), so its
daemons, clients, munge and MariaDB are all that suite's. Built with Debian's own debootstrap from the Debian
registry; cached under $LAB_ROOTS_DIR (default /var/cache/slurm-multicluster/roots), one directory per suite
and package list, reused by every lab, test run and CI run on the machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from .system import LabError

HOST = "host"
# Slurm release -> Debian suite shipping it (checked 2026-12-01: trixie 24.11.5, sid 26.05.5; sid moves).
RELEASES = {"22.05": HOST, "24.11": "trixie", "26.05": "sid"}
DEFAULT_RELEASE = "24.11"  # ParallelCluster 3.14's Slurm
MIRROR = "http://deb.debian.org/debian"
# What a ParallelCluster-shaped node needs: the Slurm daemons and clients, munge, MariaDB (accounting heads),
# python3 for the lab's systemctl stand-in (and the shared libraries the host venv's python loads for `aws`),
# and what the node scripts call (bash, coreutils, util-linux's flock/setpriv, procps, iproute2).
PACKAGES = ("slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "mariadb-server", "mariadb-client",
            "procps", "iproute2", "python3", "util-linux")
# debootstrap's "I: <Verb> <package>" lines, grouped into the steps the progress shows (verb counted -> step)
STEPS = {"Retrieving": "downloading", "Extracting": "extracting", "Unpacking": "unpacking", "Configuring": "configuring"}
VERB = re.compile(r"^I: (\w+)")


def cache_dir() -> Path:
    return Path(os.environ.get("LAB_ROOTS_DIR", "/var/cache/slurm-multicluster/roots"))


def suite_of(release: str) -> str:
    """The Debian suite for a Slurm release ('host' for the host's own 22.05); LabError for others."""
    try:
        return RELEASES[release]
    except KeyError:
        raise LabError(f"Slurm {release!r} is not available in the lab (have: {', '.join(RELEASES)})") from None


def root_path(suite: str) -> Path:
    tag = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:8]
    return cache_dir() / f"{suite}-{tag}"


def describe(root: Path) -> dict:
    """Versions recorded when the root was built (slurm, munge, mariadb, python3)."""
    return json.loads((root / "lab-root.json").read_text())


def ensure(release: str, progress: Callable[[str], None] | None = None) -> Path | None:
    """The root for a Slurm release (None for the host's own), building and caching it first if needed.
    Safe when several processes ask at once (one builds, the others wait on the lock and reuse it)."""
    suite = suite_of(release)
    if suite == HOST:
        return None
    root = root_path(suite)
    if (root / "lab-root.json").exists():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "lab-root.json").exists():
            _build(suite, release, root, progress)
    return root


def _say(progress, t0: float, text: str) -> None:
    if progress:
        progress(f"[{time.monotonic() - t0:5.1f}s] root {text}")


def _build(suite: str, release: str, root: Path, progress) -> None:
    if not shutil.which("debootstrap"):
        raise LabError("debootstrap is not installed (apt-get install debootstrap): needed for Slurm " + release)
    t0 = time.monotonic()
    work = root.with_name(root.name + f".build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    _say(progress, t0, f"{suite}: building Slurm {release} root with debootstrap into {work}")
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(work), MIRROR]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    step, count, tail = None, 0, []
    assert proc.stdout
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        m = VERB.match(line)
        if not m or m[1] not in STEPS:
            continue
        if STEPS[m[1]] != step:
            if step:
                _say(progress, t0, f"{suite}: {step}: {count} packages")
            step, count = STEPS[m[1]], 0
        count += 1
        if count % 100 == 0:
            _say(progress, t0, f"{suite}: {step}: {count} packages so far")
    if step:
        _say(progress, t0, f"{suite}: {step}: {count} packages")
    if proc.wait() != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise LabError(f"debootstrap {suite} failed ({proc.returncode}): " + " | ".join(tail[-5:]))
    versions = _versions(work)
    if not versions["slurm"].startswith(release + "."):
        shutil.rmtree(work, ignore_errors=True)
        raise LabError(f"Debian {suite} now ships Slurm {versions['slurm']}, not {release}: update lab/roots.py")
    (work / "lab-root.json").write_text(json.dumps({"suite": suite, "packages": PACKAGES, **versions}, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    os.rename(work, root)
    size = subprocess.run(["du", "-sh", str(root)], capture_output=True, text=True).stdout.split("\t")[0]
    _say(progress, t0, f"{suite}: ready: Slurm {versions['slurm']}, munge {versions['munge']}, "
                       f"MariaDB {versions['mariadb']}, {size} at {root}")


def _versions(root: Path) -> dict:
    def run(*cmd: str) -> str:
        cp = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise LabError(f"{' '.join(cmd)} fails inside the {root.name} root: {cp.stderr.strip()}")
        return cp.stdout.strip()

    return {
        "slurm": run("slurmctld", "-V").split()[-1],
        "munge": run("munged", "-V").split()[0].removeprefix("munge-"),
        "mariadb": run("mariadbd", "--version").split()[2].split("-")[0],
        "python3": run("python3", "-V").split()[-1],
    }
