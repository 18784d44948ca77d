"""Command line: python -m lab up|down|status|exec|boot|reboot (see lab/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import roots
from .core import ClusterSpec, Lab
from .system import LabError


def parse_clusters(text: str, computes: int, spare: int, slurm: str = "", logins: int = 0) -> list[ClusterSpec]:
    """'alpha:accounting:26.05,beta' -> ClusterSpecs, every cluster with the same node counts; a Slurm release
    after a name (e.g. ':24.11') overrides `slurm` for that cluster."""
    specs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, *flags = item.split(":")
        release = next((f for f in flags if f in roots.RELEASES), slurm)
        unknown = [f for f in flags if f != "accounting" and f not in roots.RELEASES]
        if unknown:
            raise LabError(f"--clusters entry {item!r}: after a name only ':accounting' and a Slurm release "
                           f"({', '.join(roots.RELEASES)}) may follow")
        specs.append(ClusterSpec(name, accounting="accounting" in flags, computes=computes, spare_computes=spare,
                                 slurm=release, logins=logins))
    return specs


def print_status(st: dict) -> None:
    print(f"lab {st['name']} ({st['status']}), subnet {st['subnet']}, bridge {st['bridge_ip']} "
          f"in netns {st['bridge_ns']}, files in {st['root']}")
    print(f"{'NODE':<22} {'IP':<15} {'HOLDER':<8} DAEMONS")
    for n in st["nodes"]:
        if n["holder"] is None:
            daemons = "node not running"
        elif not n["booted"]:
            daemons = "spare, not booted (python -m lab boot " + n["name"] + ")"
        else:
            daemons = " ".join(f"{u}={s}" for u, s in n["units"].items())
        print(f"{n['name']:<22} {n['ip']:<15} {str(n['holder'] or '-'):<8} {daemons}")
    for cluster, text in st["sinfo"].items():
        print(f"\n== sinfo on {cluster}-head")
        print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    default_name = os.environ.get("LAB_NAME", "lab")

    up = sub.add_parser("up", help="bring the lab up (removing leftovers of a previous one first)")
    up.add_argument("--name", default=default_name)
    up.add_argument("--subnet", default="10.250.0.0/24")
    up.add_argument("--clusters", default="alpha:accounting,beta",
                    help="comma-separated cluster names; ':accounting' gives that head MariaDB + slurmdbd")
    up.add_argument("--computes", type=int, default=1, help="booted compute nodes per cluster")
    up.add_argument("--spare-computes", type=int, default=0, help="compute nodes per cluster left stopped")
    up.add_argument("--logins", type=int, default=0, help="login nodes per cluster (munged only)")
    up.add_argument("--slurm", default="", choices=["", *roots.RELEASES],
                    help=f"Slurm release of every cluster (default: $LAB_SLURM, else {roots.DEFAULT_RELEASE}); "
                         "22.05 is the host's, others run in a cached Debian root built on first use")

    for cmd, text in (("down", "stop everything and delete the namespaces"), ("status", "nodes, daemons, sinfo")):
        s = sub.add_parser(cmd, help=text)
        s.add_argument("--name", default=default_name)
    sub.choices["status"].add_argument("--json", action="store_true")

    ex = sub.add_parser("exec", help="run a command on a node: exec NODE -- CMD...")
    ex.add_argument("--name", default=default_name)
    ex.add_argument("node")
    ex.add_argument("command", nargs=argparse.REMAINDER)

    for cmd, text in (("boot", "boot a compute node: copy the shared munge key, start munged + slurmd"),
                      ("reboot", "stop a node's daemons and boot it again")):
        s = sub.add_parser(cmd, help=text)
        s.add_argument("--name", default=default_name)
        s.add_argument("node")
        s.add_argument("--no-wait", action="store_true", help="do not wait for idle / slurmctld answering")

    rt = sub.add_parser("roots", help="build (once) and list the cached Debian roots of the Slurm releases")
    rt.add_argument("releases", nargs="*", default=[r for r, suite in roots.RELEASES.items() if suite != roots.HOST],
                    help=f"Slurm releases (default: every one not on the host: "
                         f"{', '.join(r for r, suite in roots.RELEASES.items() if suite != roots.HOST)})")

    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces, mounts)", file=sys.stderr)
        return 1
    try:
        if a.cmd == "up":
            lab = Lab(a.name, a.subnet, parse_clusters(a.clusters, a.computes, a.spare_computes, a.slurm, a.logins))
            try:
                lab.up(progress=lambda line: print(line, flush=True))
            except LabError:
                print(f"the partial lab is left for inspection: python -m lab status --name {a.name}; "
                      f"logs under {lab.root}/nodes; remove it with python -m lab down --name {a.name}", file=sys.stderr)
                raise
        elif a.cmd == "roots":
            t0 = time.monotonic()
            for release in a.releases:
                root = roots.ensure(release, progress=lambda line: print(line, flush=True))
                found = roots.describe(root) if root else {"slurm": "the host's"}
                print(f"[{time.monotonic() - t0:5.1f}s] Slurm {release}: {root or 'host'} "
                      f"({', '.join(f'{k} {v}' for k, v in found.items() if k in ('slurm', 'munge', 'mariadb'))})",
                      flush=True)
        elif a.cmd == "down":
            try:
                lab = Lab.load(a.name)
            except LabError:
                lab = Lab(a.name)
            lab.down(progress=print)
        elif a.cmd == "status":
            st = Lab.load(a.name).status()
            print(json.dumps(st, indent=2)) if a.json else print_status(st)
        elif a.cmd == "exec":
            command = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not command:
                print("error: usage: python -m lab exec NODE -- CMD...", file=sys.stderr)
                return 2
            return Lab.load(a.name).exec(a.node, command, capture=False, timeout=None).returncode
        elif a.cmd in ("boot", "reboot"):
            lab = Lab.load(a.name)
            t0 = time.monotonic()
            seen = getattr(lab, a.cmd)(a.node, wait=not a.no_wait)
            print(f"[{time.monotonic() - t0:5.1f}s] {a.cmd} {a.node}: {seen}")
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
