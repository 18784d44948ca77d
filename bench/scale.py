"""Federation scale benchmark (issue 10): a federation grown one pairing at a time to 50 members in two regions,
then one key rotation across all of them, then 10 members unpaired one after the other, in moto (real ASL, real
handlers, simulated nodes: tests/workflow/federation_network.py), figures per size and per run.

Growth: at each size in --sizes (default 2,5,10,25,50, up to --max-members), for the pairing that reached it: max
inbound rules per head node group (a prefix list counted as its MaxEntries), max security groups per ENI, AWS API
calls made by the product (botocore before-call events outside the bench's own thread, by service), SSM commands
(command invocations on nodes), state transitions (*StateEntered history events), Map concurrency used (most
MapIterations in flight at once, also per Map state), wall time in moto.
Rotation: the rotation state machine across every member, the same figures, its outcome and how many nodes run
the new key.
Unpairing: --unpair members (the last paired, both regions) leave one after the other, each by its stack's
DELETE_IN_PROGRESS event routed to the unpairing state machine: the same figures per unpairing, and what of ours
the departed cluster still carries once its unpairing ended (our rules on, referencing or naming it; the
federation group on its running nodes' ENIs). After all of them: max rules per group, max groups per ENI, and
what of ours is left on any departed cluster.

Figures only: no thresholds, no assertions. Last line: every figure as one JSON object. Exit 1 if an execution
did not succeed or something of ours is left on a departed cluster.

    .venv/bin/python bench/scale.py [--sizes 2,5,10,25,50] [--max-members 50] [--unpair 10]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests", REPO / "functions" / "shared"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR",
                   "POWERTOOLS_SERVICE_NAME": "slurm-multicluster"}.items():
    os.environ.setdefault(key, value)

import boto3  # noqa: E402

from lab import cloud  # noqa: E402
from lab.parallelcluster import ClusterInAws  # noqa: E402
from slurm_multicluster import ingress, limits  # noqa: E402
from workflow.federation_network import (FEDERATION, HOME, OTHER, ScaleFederation, federation_group,  # noqa: E402
                                         finish_deletion, groups_per_eni, head_group_rules, network_interface,
                                         scale_federation)

LOG_FILE = Path("/var/tmp/slurm-multicluster-bench-scale.log")
CONSOLE = sys.stdout  # the Lambdas' JSON logs and metrics go to --log
ROTATION_TIMEOUT = 1800  # seconds; moto runs every member's Map iteration in threads of one process
CALLS: collections.Counter[str] = collections.Counter()


def _count(event_name: str, **_: object) -> None:
    # The bench's own calls (event delivery, polling, observing EC2) run in the main thread: not the product's.
    if threading.current_thread() is not threading.main_thread():
        CALLS[event_name.split(".")[1]] += 1  # before-call.<service>.<operation>


def map_concurrency(history: list[dict[str, Any]]) -> dict[str, int]:
    """Most Map iterations in flight at once, per Map state."""
    running: collections.Counter[str] = collections.Counter()
    most: dict[str, int] = {}
    for event in history:
        details = event.get("mapIterationStartedEventDetails") or event.get("mapIterationSucceededEventDetails") \
            or event.get("mapIterationFailedEventDetails") or event.get("mapIterationAbortedEventDetails") or {}
        name = details.get("name", "?")
        if event["type"] == "MapIterationStarted":
            running[name] += 1
            most[name] = max(most.get(name, 0), running[name])
        elif event["type"] in ("MapIterationSucceeded", "MapIterationFailed", "MapIterationAborted"):
            running[name] -= 1
    return most


def overall_map_concurrency(history: list[dict[str, Any]]) -> int:
    running = most = 0
    for event in history:
        if event["type"] == "MapIterationStarted":
            running += 1
            most = max(most, running)
        elif event["type"] in ("MapIterationSucceeded", "MapIterationFailed", "MapIterationAborted"):
            running -= 1
    return most


def failed_states(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every task or iteration that failed or timed out (caught or not), with the state it ran in."""
    by_id = {e["id"]: e for e in history}
    found = []
    for event in history:
        if event["type"] == "ExecutionFailed" or not event["type"].endswith(("Failed", "TimedOut")):
            continue
        state, previous = "?", event
        while previous is not None:
            if "stateEnteredEventDetails" in previous:
                state = previous["stateEnteredEventDetails"]["name"]
                break
            previous = by_id.get(previous.get("previousEventId"))
        details = next((v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})
        found.append({"state": state, "event": event["type"], "error": details.get("error", ""),
                      "cause": details.get("cause", "")})
    return found


class Measurement:
    """AWS API calls, SSM commands and wall time of what runs inside the ``with``; then the execution's figures."""

    def __init__(self, federation: ScaleFederation):
        self.nodes = federation.nodes

    def __enter__(self) -> Measurement:
        CALLS.clear()
        self.commands = len(self.nodes.calls)
        self.started = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.monotonic() - self.started
        self.calls = dict(CALLS)
        self.commands = len(self.nodes.calls) - self.commands

    def figures(self, result: dict[str, Any]) -> dict[str, Any]:
        history = cloud.history(result["executionArn"], HOME)
        figures: dict[str, Any] = {
            "status": result["status"], "apiCalls": sum(self.calls.values()), "apiCallsByService": self.calls,
            "ssmCommands": self.commands,
            "stateTransitions": sum(1 for e in history if e["type"].endswith("StateEntered")),
            "mapConcurrency": overall_map_concurrency(history), "mapConcurrencyByState": map_concurrency(history),
            "wallSeconds": round(self.wall, 1),
        }
        if result["status"] != "SUCCEEDED":
            names = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
            figures.update({"error": result.get("error"), "cause": result.get("cause"),
                            "failedStates": failed_states(history), "lastStates": names[-8:]})
        return figures


def say(text: str, file: Any = None) -> None:
    print(text, file=file or CONSOLE, flush=True)


def summary(figures: dict[str, Any]) -> str:
    by_state = ", ".join(f"{name} {n}" for name, n in figures["mapConcurrencyByState"].items())
    return (f"API calls {figures['apiCalls']}, SSM commands {figures['ssmCommands']}, transitions "
            f"{figures['stateTransitions']}, Map concurrency {figures['mapConcurrency']}"
            f"{f' ({by_state})' if by_state else ''}, {figures['wallSeconds']:.1f} s")


def readable(cause: str | None) -> str:
    """A Lambda error's message without its stack trace (the JSON report keeps all of it)."""
    try:
        return str(json.loads(cause or "")["errorMessage"])
    except (ValueError, KeyError, TypeError):
        return re.sub(r',\s*"stackTrace":\s*\[.*?"\]', "", cause or "")


def report_failure(what: str, figures: dict[str, Any]) -> None:
    say(f"{what} {figures['status']}: error {figures.get('error')}\n  cause: {readable(figures.get('cause'))}\n"
        f"  last states: {' -> '.join(figures.get('lastStates', []))}", sys.stderr)
    for failure in figures.get("failedStates", []):
        say(f"  {failure['event']} in {failure['state']}: {failure['error']}: {readable(failure['cause'])}", sys.stderr)


def rotate(federation: ScaleFederation) -> dict[str, Any]:
    """The federation's rotation, as `sam remote invoke RotationStateMachine` starts it; stopped at the timeout."""
    arn = cloud.start_execution(federation.deployment, {"federation": FEDERATION, "region": HOME},
                                cloud.ROTATION_STATE_MACHINE)
    try:
        return cloud.wait_for_execution(arn, HOME, timeout=ROTATION_TIMEOUT)
    except TimeoutError as timeout:
        boto3.client("stepfunctions", region_name=HOME).stop_execution(executionArn=arn, error="BenchTimeout",
                                                                       cause=str(timeout))
        return {"executionArn": arn, "status": "TIMED_OUT", "error": "BenchTimeout", "cause": str(timeout)}


def ours_left_on(federation: ScaleFederation, cluster: ClusterInAws, running: bool) -> dict[str, list[str]]:
    """What of ours a departed cluster still carries: rules anywhere on, referencing or naming its head node group
    or stack (ours, by their federation tag, or any rule referencing its group), and, while its nodes still run,
    ENIs carrying its VPC's federation group."""
    rules = []
    for region in (HOME, OTHER):
        ec2 = boto3.client("ec2", region_name=region)
        for page in ec2.get_paginator("describe_security_group_rules").paginate():
            for rule in page["SecurityGroupRules"]:
                tags = {t["Key"]: t["Value"] for t in rule.get("Tags", [])}
                referenced = rule.get("ReferencedGroupInfo", {}).get("GroupId")
                names_it = cluster.stack_id in (tags.get(ingress.SOURCE_STACK_TAG), tags.get(ingress.TARGET_STACK_TAG))
                ours = ingress.OWNER_TAG in tags and (rule["GroupId"] == cluster.security_group_id or names_it)
                if ours or (referenced == cluster.security_group_id and rule["GroupId"] != cluster.security_group_id):
                    rules.append(f"{region}:{rule['GroupId']}:{rule['SecurityGroupRuleId']}")
    enis = []
    if running:
        ec2 = boto3.client("ec2", region_name=cluster.region)
        group = federation_group(cluster.region, federation.networks[cluster.region].vpc_id)
        for instance_id in cluster.instance_ids:
            eni = network_interface(cluster.region, instance_id)
            groups = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["Groups"]
            if group and group in [g["GroupId"] for g in groups]:
                enis.append(f"{instance_id}:{eni}")
    return {"rules": rules, "federationGroupOnEnis": enis}


def left_summary(left: dict[str, list[str]]) -> str:
    if not any(left.values()):
        return "nothing"
    return f"{len(left['rules'])} rules {left['rules']}, federation group on ENIs {left['federationGroupOnEnis']}"


def member_name(i: int) -> str:
    return "alpha" if i == 0 else f"member{i:02d}"


def grow(federation: ScaleFederation, members: int, sizes: list[int], report: dict[str, Any]) -> bool:
    """Pair ``members`` clusters one at a time, alternating the two regions; figures at each of ``sizes``."""
    for i in range(members):
        name = member_name(i)
        federation.create(name, HOME if i % 2 == 0 else OTHER)
        with Measurement(federation) as measured:
            result = federation.pair(name)
        if result["status"] != "SUCCEEDED":
            report["growth"].append({"members": i + 1, "cluster": name, **measured.figures(result)})
            report_failure(f"pairing {name} ({i + 1} members)", report["growth"][-1])
            return False
        if i + 1 in sizes:
            row = {"members": i + 1, "maxRulesPerGroup": max(head_group_rules(federation).values()),
                   "maxGroupsPerEni": max(groups_per_eni(federation).values()), **measured.figures(result)}
            report["growth"].append(row)
            say(f"{i + 1:>3} members: rules/group {row['maxRulesPerGroup']}, groups/ENI {row['maxGroupsPerEni']}, "
                f"{summary(row)}")
    return True


def rotate_all(federation: ScaleFederation, report: dict[str, Any]) -> bool:
    """One rotation across every member; then which key their (simulated) nodes run."""
    nodes = [n for n in federation.nodes.nodes.values() if n.cluster in federation.clusters]
    previous_sha = collections.Counter(n.key_sha for n in nodes).most_common(1)[0][0]
    with Measurement(federation) as measured:
        result = rotate(federation)
    figures = {"members": len(federation.clusters), **measured.figures(result), "nodes": len(nodes)}
    new_sha = json.loads(result["output"])["sha256"] if result["status"] == "SUCCEEDED" else None
    figures["nodesOnNewKey"] = sum(1 for n in nodes if new_sha and n.key_sha == new_sha)
    figures["nodesOnPreviousKey"] = sum(1 for n in nodes if n.key_sha == previous_sha)
    report["rotation"] = figures
    say(f"rotation of {figures['members']} members: {figures['status']}, nodes on the new key "
        f"{figures['nodesOnNewKey']}/{len(nodes)}, on the previous key {figures['nodesOnPreviousKey']}/{len(nodes)}, "
        f"{summary(figures)}")
    if result["status"] != "SUCCEEDED":
        report_failure(f"rotation of {figures['members']} members", figures)
        return False
    return True


def unpair_some(federation: ScaleFederation, count: int, report: dict[str, Any]) -> bool:
    """The last ``count`` members paired leave one after the other, each by its stack's deletion."""
    ok, departed = True, []
    leaving = [member_name(i) for i in range(len(federation.clusters) - 1, len(federation.clusters) - 1 - count, -1)]
    for n, name in enumerate(leaving, 1):
        with Measurement(federation) as measured:
            cluster, result = federation.unpair_on_deletion(name)
        # observed before CloudFormation terminates the cluster's nodes
        figures = {"cluster": name, "region": cluster.region, **measured.figures(result),
                   "leftOnIt": ours_left_on(federation, cluster, running=True)}
        finish_deletion(cluster)
        departed.append(cluster)
        report["unpairings"].append(figures)
        say(f"unpairing {n}/{count} {name} ({cluster.region}): {figures['status']}, {summary(figures)}; "
            f"left on it: {left_summary(figures['leftOnIt'])}")
        if result["status"] != "SUCCEEDED":
            report_failure(f"unpairing of {name}", figures)
            ok = False
        ok = ok and not any(figures["leftOnIt"].values())
    # rules as they are now; the ENIs went with the terminated nodes: what they carried as each unpairing ended
    left = {cluster.name: {"rules": ours_left_on(federation, cluster, running=False)["rules"],
                           "federationGroupOnEnis": unpairing["leftOnIt"]["federationGroupOnEnis"]}
            for cluster, unpairing in zip(departed, report["unpairings"])}
    after = {"members": len(federation.clusters), "maxRulesPerGroup": max(head_group_rules(federation).values()),
             "maxGroupsPerEni": max(groups_per_eni(federation).values()),
             "leftOnDeparted": {name: found for name, found in left.items() if any(found.values())}}
    report["afterUnpairings"] = after
    say(f"after {count} unpairings ({after['members']} members): rules/group {after['maxRulesPerGroup']}, "
        f"groups/ENI {after['maxGroupsPerEni']}, left on the departed clusters: {after['leftOnDeparted'] or 'nothing'}")
    return ok and not after["leftOnDeparted"]


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", default="2,5,10,25,50", help="federation sizes to print growth figures at")
    parser.add_argument("--max-members", type=int, default=limits.MAX_FEDERATION_MEMBERS,
                        help="grow the federation to this many members (default %(default)s; e.g. 10 for a quick check)")
    parser.add_argument("--unpair", type=int, default=10, help="members to unpair after the rotation (default 10)")
    parser.add_argument("--log", type=Path, default=LOG_FILE, help=f"the Lambdas' logs (default {LOG_FILE})")
    args = parser.parse_args()
    if not 2 <= args.max_members <= limits.MAX_FEDERATION_MEMBERS or not 0 <= args.unpair < args.max_members:
        parser.error(f"--max-members must be 2..{limits.MAX_FEDERATION_MEMBERS} and --unpair 0..max-members - 1 "
                     "(the accounting cluster stays)")
    sizes = sorted({int(s) for s in args.sizes.split(",") if int(s) <= args.max_members} | {args.max_members})
    report: dict[str, Any] = {"growth": [], "rotation": None, "unpairings": [], "afterUnpairings": None}
    ok, started = False, time.monotonic()
    with args.log.open("w") as log, contextlib.redirect_stdout(log):
        federation_source = scale_federation(None)
        federation = next(federation_source)
        boto3.DEFAULT_SESSION.events.register("before-call", _count)
        try:
            if grow(federation, args.max_members, sizes, report):
                rotated = rotate_all(federation, report)
                unpaired = unpair_some(federation, args.unpair, report) if args.unpair else True
                ok = rotated and unpaired
        finally:
            federation_source.close()
    report["totalWallSeconds"] = round(time.monotonic() - started, 1)
    say(f"whole run: {report['totalWallSeconds']:.0f} s")
    say(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
