"""Fixtures for the lab tests: real Slurm/munge/MariaDB daemons in network namespaces (root only)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parents[1]), str(HERE)):  # the repo (package `lab`) and lab_helpers, in any import mode
    if p not in sys.path:
        sys.path.insert(0, p)

from lab import ClusterSpec, Lab  # noqa: E402
from lab.core import DEFAULT_BASE, remove_orphans  # noqa: E402
from lab_helpers import LAB_NAME, LAB_SUBNET, TOOLS  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lab: runs real Slurm/munge daemons in network namespaces (root, Debian packages; see lab/README.md)")


def missing_prerequisites() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, bind mounts)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in TOOLS if not shutil.which(t, path=path)]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install slurmctld slurmd slurmdbd munge mariadb-server iproute2)"
    return None


@pytest.fixture(scope="session")
def lab_host():
    """Skips when the machine cannot run the lab, but fails under CI=true (CI must run these tests)."""
    reason = missing_prerequisites()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"lab prerequisites missing under CI=true: {reason}")
        pytest.skip(reason)
    # labs of a run that was killed before tearing them down (the names are per run, so nothing else would)
    remove_orphans(DEFAULT_BASE, progress=print)


@pytest.fixture(scope="session")
def lab(lab_host):
    """Two clusters, as after `pcluster create-cluster` and before any pairing: alpha (with a Database:
    MariaDB + slurmdbd on its head; one booted and one spare compute node) and beta (no Database)."""
    the_lab = Lab(LAB_NAME, LAB_SUBNET,
                  [ClusterSpec("alpha", accounting=True, computes=1, spare_computes=1), ClusterSpec("beta", computes=1)],
                  root=DEFAULT_BASE / LAB_NAME)
    lines = []
    t0 = time.monotonic()
    try:
        the_lab.up(progress=lines.append)
    except Exception:
        print("\n".join(lines))
        the_lab.down()
        raise
    the_lab.up_seconds = time.monotonic() - t0
    the_lab.up_progress = lines
    yield the_lab
    the_lab.down()


