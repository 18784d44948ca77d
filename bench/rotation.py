"""Munge key rotation benchmark: wall time of one federation-wide rotation for 1, 2 and 3 member clusters.

For each size N: a fresh lab `rotbench<N>` (subnet 10.252.<4+N>.0/24): alpha with accounting plus N members
(beta, gamma, delta), one compute node each; moto with the deployed template (lab.bridge.lab_cloud); the
members paired one after the other by the pairing workflow (not timed); then `--runs` rotations through the
real rotation state machine (as `sam remote invoke RotationStateMachine --event-file events/manual-rotate.json`
starts it), each timed; lab down.

Figures per rotation, all from the execution history (describe_execution / get_execution_history):
- wall: startDate -> stopDate;
- per phase: first *StateEntered -> last *StateExited of CreatePendingKey, StagePendingKey, SwitchMembers,
  TestFederation, FinishRotation;
- switch spread: how far apart the members' switches start (max - min of the SwitchMember iterations'
  TaskStateEntered), and the switch window (first SwitchMember entered -> last exited): how long the
  federation runs on two keys at once.
And what users see meanwhile: a prober on the accounting head node runs `sbatch --clusters=<member>
--test-only --wrap true` for every other member in a loop during the rotation; "submit outage" is the longest
stretch of failed submissions to a member (the time its slurmctld restarts and registers again).
Prints a table and, last, the same figures as one JSON line. No thresholds, no assertions.
Exit 1 if a rotation did not succeed, 2 without root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from lab import ClusterSpec, Lab, LabError, roots  # noqa: E402
from lab.core import scoped_name  # noqa: E402
from lab import cloud as harness  # noqa: E402
from lab.bridge import LabCloud, lab_cloud  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probes import SubmitProber  # noqa: E402

FEDERATION = "bench"
MEMBERS = ("beta", "gamma", "delta")
PHASES = ("CreatePendingKey", "StagePendingKey", "SwitchMembers", "TestFederation", "FinishRotation")
LOG = Path("/var/tmp/slurm-multicluster-bench-rotation.log")
CONSOLE = sys.stdout
START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {text}", file=CONSOLE, flush=True)


def tags(member: bool = True, accounting: bool = False) -> dict[str, str]:
    found = {"slurm-multicluster:federation": FEDERATION} if member else {}
    if accounting:
        found["slurm-multicluster:role"] = "accounting"
    return found


def opt_in(cloud: LabCloud, cluster: str) -> None:
    """A running cluster asks to join and is admitted (members join one after the other)."""
    cloud.opt_in(cluster, tags())


def figures(arn: str, region: str) -> dict[str, Any]:
    """Wall time, phases and the switch spread of one execution, from its history."""
    sfn = boto3.client("stepfunctions", region_name=region)
    described = sfn.describe_execution(executionArn=arn)
    events = harness.history(arn, region)
    entered: dict[str, list[float]] = {}
    exited: dict[str, list[float]] = {}
    for event in events:
        at = event["timestamp"].timestamp()
        if "stateEnteredEventDetails" in event:
            entered.setdefault(event["stateEnteredEventDetails"]["name"], []).append(at)
        elif "stateExitedEventDetails" in event:
            exited.setdefault(event["stateExitedEventDetails"]["name"], []).append(at)
    phases = {name: round(max(exited[name]) - min(entered[name]), 2)
              for name in PHASES if name in entered and name in exited}
    switches = entered.get("SwitchMember", [])
    return {
        "status": described["status"],
        "wall": round((described["stopDate"] - described["startDate"]).total_seconds(), 2),
        "phases": phases,
        "switchSpread": round(max(switches) - min(switches), 2) if switches else None,
        "switchWindow": round(max(exited.get("SwitchMember", [0])) - min(switches), 2) if switches else None,
        "error": described.get("error"),
    }


def bench_size(members: int, runs: int, slurm: str) -> list[dict[str, Any]]:
    names = ["alpha", *MEMBERS[:members]]
    lab = Lab(scoped_name(f"rotbench{members}"), f"10.252.{4 + members}.0/24",
              [ClusterSpec(name, accounting=name == "alpha", computes=1, slurm=slurm) for name in names])
    say(f"{members} member(s): lab up ({', '.join(names)}, Slurm {slurm})")
    lab.up()
    results = []
    try:
        initial = {"alpha": tags(accounting=True), "beta": tags()}
        with lab_cloud(lab, initial) as cloud:
            for member in names[1:]:
                if member != "beta":
                    opt_in(cloud, member)
                paired = cloud.run(cloud.event_for(member))
                say(f"  paired {member}: {paired['status']}")
                if paired["status"] != "SUCCEEDED":
                    raise LabError(f"pairing {member} failed: {paired.get('cause', '')[:300]}")
            for run in range(1, runs + 1):
                prober = SubmitProber(lab, [("alpha-head", member) for member in names[1:]])
                prober.start()
                try:
                    result = cloud.rotate(FEDERATION)
                finally:
                    prober.done.set()
                    prober.join()
                measured = figures(result["executionArn"], cloud.region)
                measured.update(members=members, clusters=len(names), nodes=len(lab.nodes), run=run, slurm=slurm,
                                submitOutage=prober.longest_outage())
                say(f"  rotation {run}/{runs}: {measured['status']} in {measured['wall']} s")
                results.append(measured)
    finally:
        lab.down()
    return results


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    by_size: dict[int, list[dict[str, Any]]] = {}
    for result in results:
        by_size.setdefault(result["members"], []).append(result)
    rows = ["wall", *PHASES, "switchSpread", "switchWindow", "submitOutage"]
    header = f"{'median seconds':<22}" + "".join(f"{f'{n} member(s)':>14}" for n in sorted(by_size))
    print("\n" + header, file=CONSOLE)
    summary: dict[str, Any] = {}
    for row in rows:
        cells = []
        for size, runs in sorted(by_size.items()):
            values = [r["phases"].get(row) if row in PHASES else r.get(row) for r in runs]
            values = [v for v in values if v is not None]
            value = round(statistics.median(values), 2) if values else None
            summary.setdefault(f"{size}", {})[row] = value
            cells.append(f"{value if value is not None else '-':>14}")
        print(f"{row:<22}" + "".join(cells), file=CONSOLE)
    nodes = "".join(f"{runs[0]['nodes']:>14}" for _, runs in sorted(by_size.items()))
    print(f"{'nodes in federation':<22}" + nodes, file=CONSOLE)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="1,2,3", help="member counts to measure (default 1,2,3)")
    parser.add_argument("--runs", type=int, default=1, help="rotations per size (default 1)")
    parser.add_argument("--slurm", default=roots.DEFAULT_RELEASE, choices=list(roots.RELEASES),
                        help=f"Slurm release of every cluster (default {roots.DEFAULT_RELEASE})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/rotation.py needs root (the lab uses network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(n) for n in args.members.split(",")]
    if any(n not in (1, 2, 3) for n in sizes):
        parser.error("--members takes counts from 1 to 3")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results: list[dict[str, Any]] = []
    say(f"Lambda logs: {LOG}")
    with LOG.open("w") as log, contextlib.redirect_stdout(log):
        for size in sizes:
            results += bench_size(size, args.runs, args.slurm)
    summary = report(results)
    print(json.dumps({"median": summary, "runs": results}), file=CONSOLE)
    return 0 if all(r["status"] == "SUCCEEDED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
