"""SchedMD's compatibility rules between a slurmdbd and the slurmctlds that register with it.

From SchedMD's upgrade guide (quick start admin guide, "Upgrades"): slurmdbd must run the same or a newer major
release than every slurmctld, and a daemon accepts RPCs from at most two older major releases, three from
24.11 on (24.11 accepts 24.05, 23.11 and 23.02). Outside that window the slurmdbd refuses the slurmctld's
connection (`protocol_version 9728 not supported` for 22.05 against 24.11) and the cluster never registers.
"""

from __future__ import annotations

import re

# Major releases in order (YY.MM). A release missing here is refused: we cannot tell how far apart it is.
MAJOR_RELEASES = ("20.02", "20.11", "21.08", "22.05", "23.02", "23.11", "24.05", "24.11", "25.05", "25.11",
                  "26.05", "26.11")
_VERSION = re.compile(r"^(\d{2})\.(\d{2})(?:\.(\d+))?")


def major(version: str) -> str:
    """'24.11.5' -> '24.11'; ValueError for a string that is not a Slurm version."""
    m = _VERSION.match(version or "")
    if not m:
        raise ValueError(f"{version!r} is not a Slurm version (YY.MM[.patch])")
    return f"{m[1]}.{m[2]}"


def key(version: str) -> tuple[int, int, int]:
    """Sortable (year, month, patch) of a Slurm version string."""
    m = _VERSION.match(version or "")
    if not m:
        raise ValueError(f"{version!r} is not a Slurm version (YY.MM[.patch])")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def older_releases_accepted(dbd_version: str) -> int:
    """How many major releases older than its own a slurmdbd of this version accepts."""
    return 3 if key(dbd_version) >= (24, 11, 0) else 2


def incompatibility(slurmctld_version: str, dbd_version: str) -> str | None:
    """Why a slurmctld of one version cannot register with a slurmdbd of another; None when it can."""
    try:
        ctld, dbd = major(slurmctld_version), major(dbd_version)
    except ValueError as e:
        return str(e)
    for release in (ctld, dbd):
        if release not in MAJOR_RELEASES:
            return f"Slurm {release} is not a major release this tool knows ({', '.join(MAJOR_RELEASES)})"
    if key(slurmctld_version) > key(dbd_version):
        return (f"slurmctld {slurmctld_version} is newer than slurmdbd {dbd_version}: slurmdbd must be the same or "
                f"a newer release than every slurmctld (upgrade slurmdbd first)")
    apart = MAJOR_RELEASES.index(dbd) - MAJOR_RELEASES.index(ctld)
    window = older_releases_accepted(dbd_version)
    if apart > window:
        return (f"slurmctld {slurmctld_version} is {apart} major releases older than slurmdbd {dbd_version}; "
                f"slurmdbd {dbd} accepts at most {window} older major releases "
                f"(oldest: {MAJOR_RELEASES[MAJOR_RELEASES.index(dbd) - window]}): upgrade that cluster first")
    return None
