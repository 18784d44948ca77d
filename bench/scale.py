"""Federation scale benchmark (issue 10): a federation grown one pairing at a time to 50 members in two regions
in moto (real ASL, real handlers, simulated nodes: tests/workflow/federation_network.py), figures per size.

At each size in --sizes (default 2,5,10,25,50), for the pairing that reached it: max inbound rules per head node
group (a prefix list counted as its MaxEntries), max security groups per ENI, AWS API calls made by the
functions (botocore before-call events, by service), SSM commands, state transitions (*StateEntered history
events), Map concurrency used (most MapIterations in flight at once), wall time in moto. Figures only: no
thresholds, no assertions. Exit 1 if a pairing did not succeed.

    PYTHONPATH=.:tests:functions/shared .venv/bin/python bench/scale.py [--sizes 2,5,10,25,50]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import boto3

for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"}.items():
    os.environ.setdefault(key, value)

from lab import cloud  # noqa: E402
from workflow.federation_network import HOME, OTHER, groups_per_eni, head_group_rules, scale_federation  # noqa: E402

CALLS: collections.Counter[str] = collections.Counter()


def _count(event_name: str, **_: object) -> None:
    CALLS[event_name.split(".")[1]] += 1  # before-call.<service>.<operation>


def map_concurrency(execution_arn: str) -> int:
    running = most = 0
    for event in cloud.history(execution_arn, HOME):
        if event["type"] == "MapIterationStarted":
            running += 1
            most = max(most, running)
        elif event["type"] in ("MapIterationSucceeded", "MapIterationFailed", "MapIterationAborted"):
            running -= 1
    return most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2,5,10,25,50")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = []
    federation_source = scale_federation(None)
    federation = next(federation_source)
    boto3.DEFAULT_SESSION.events.register("before-call", _count)
    try:
        for i in range(max(sizes)):
            name = "alpha" if i == 0 else f"member{i:02d}"
            federation.create(name, HOME if i % 2 == 0 else OTHER)
            CALLS.clear()
            commands_before = len(federation.nodes.calls)
            started = time.monotonic()
            result = federation.pair(name)
            wall = time.monotonic() - started
            calls, commands = sum(CALLS.values()), len(federation.nodes.calls) - commands_before
            by_service = dict(CALLS)
            if result["status"] != "SUCCEEDED":
                print(f"pairing {name} {result['status']}: {result.get('cause')}", file=sys.stderr)
                return 1
            if i + 1 in sizes:
                history = cloud.history(result["executionArn"], HOME)
                rows.append({
                    "members": i + 1, "maxRulesPerGroup": max(head_group_rules(federation).values()),
                    "maxGroupsPerEni": max(groups_per_eni(federation).values()), "apiCalls": calls,
                    "apiCallsByService": by_service, "ssmCommands": commands,
                    "stateTransitions": sum(1 for e in history if e["type"].endswith("StateEntered")),
                    "mapConcurrency": map_concurrency(result["executionArn"]), "wallSeconds": round(wall, 1),
                })
                print(f"{i + 1:>3} members: rules/group {rows[-1]['maxRulesPerGroup']}, groups/ENI "
                      f"{rows[-1]['maxGroupsPerEni']}, API calls {calls}, SSM commands {commands}, transitions "
                      f"{rows[-1]['stateTransitions']}, Map concurrency {rows[-1]['mapConcurrency']}, {wall:.1f} s",
                      flush=True)
    finally:
        federation_source.close()
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
