"""Pairing benchmark (`make bench`): where the time of one pairing goes, measured in the lab.

Each run: a fresh lab `bench<i>` (alpha with accounting + beta, one compute node each, subnet 10.254.0.0/24),
moto with the deployed template (lab.bridge.lab_cloud), beta's CloudFormation CREATE_COMPLETE event delivered
through the template's EventBridge rule, wait for the execution to end, lab down. Then a table per run and the
median, and the same figures as one JSON line (the last line printed).

Measured from outside the product (nothing in functions/, statemachine/ or lab/ is changed or wrapped):
- wall: the execution's startDate -> stopDate (describe_execution); per state: history timestamps
  (first *StateEntered -> last *StateExited of each name; Map iterations overlap);
- SSM invocations: each command text the SSM stand-in runs on a lab node (Lab.sh of this run's lab object), with
  its duration; "restart scripts" are the node scripts that restart daemons (install-munge-key.sh,
  set-accounting.sh, restore-backup.sh);
- inside daemon restarts: a 20 ms poller on the host, in a process of its own (bench/daemon_watch.py), watches
  every node's /run/lab/<unit>.pid (the lab systemctl's pid files) and the lab's `systemctl start|stop|restart`
  processes in /proc (start time from /proc/<pid>/stat, node from the process's network namespace). A restart
  counts from its systemctl process starting to its end or, for slurmctld, to the new slurmctld logging
  "Running as primary controller";
- AWS API calls: every request reaching either moto listener (a wrapper around moto's WSGI dispatcher), by
  origin: the Lambdas, Step Functions' own service integrations (Lambda Invoke, events:putEvents; moto's
  interpreter signs them with the key id "ak"), the node scripts' aws CLI (the bridge listener). The bench's own
  calls (event delivery, polling) are tagged by a botocore hook in its main thread and left out.
No thresholds, no assertions: it prints figures. Exit 1 only if a pairing did not succeed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from lab import ClusterSpec, Lab, LabError, roots  # noqa: E402
from lab.core import scoped_name  # noqa: E402
from lab import cloud as harness  # noqa: E402
from lab.bridge import lab_cloud  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_watch import Instance, SystemctlCall  # noqa: E402
from probes import SubmitProber  # noqa: E402

SUBNET = "10.254.0.0/24"
FEDERATION = "bench"
TAGS = {
    "alpha": {"slurm-multicluster:federation": FEDERATION, "slurm-multicluster:role": "accounting"},
    "beta": {"slurm-multicluster:federation": FEDERATION},
}
RESTARTING_SCRIPTS = ("install-munge-key.sh", "set-accounting.sh", "restore-backup.sh")
LOG_FILE = Path("/var/tmp/slurm-multicluster-bench.log")
CONSOLE = sys.stdout  # the Lambdas' JSON logs go to LOG_FILE
HARNESS_HEADER = "X-Bench-Origin"
POLL_SECONDS = 0.02


def say(text: str) -> None:
    print(text, file=CONSOLE, flush=True)


# ---------------------------------------------------------------- intervals
def union_seconds(intervals: list[tuple[float, float]], lo: float | None = None, hi: float | None = None) -> float:
    """Total length covered by the intervals (clipped to [lo, hi])."""
    clipped = sorted((max(a, lo) if lo is not None else a, min(b, hi) if hi is not None else b) for a, b in intervals)
    total, end = 0.0, float("-inf")
    for a, b in clipped:
        if b <= a:
            continue
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


# ---------------------------------------------------------------- AWS API calls reaching moto
class ApiCounter:
    """Counts every request reaching moto's WSGI dispatcher (both listeners) while `active`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = False
        self.records: list[dict[str, Any]] = []

    def install(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication

        original = DomainDispatcherApplication.__call__
        counter = self

        def counted(app: Any, environ: dict[str, Any], start_response: Any) -> Any:
            if counter.active:
                try:
                    counter._record(environ)
                except Exception as error:  # never break a request because of the bench
                    counter.records.append({"origin": "unparsed", "service": "?", "operation": repr(error)})
            return original(app, environ, start_response)

        DomainDispatcherApplication.__call__ = counted

        # The bench's own calls (event delivery, polling) all come from its main thread: tag them.
        def tag_harness(request: Any, **_: Any) -> None:
            if threading.current_thread() is threading.main_thread():
                request.headers[HARNESS_HEADER] = "harness"

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("before-send", tag_harness)

    def _record(self, environ: dict[str, Any]) -> None:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/moto-api"):
            return
        auth = environ.get("HTTP_AUTHORIZATION", "")
        scope = re.search(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/", auth)
        key_id, service = (scope.group(1), scope.group(2)) if scope else ("", "?")
        operation = self._operation(environ, path)
        if environ.get("HTTP_" + HARNESS_HEADER.upper().replace("-", "_")) == "harness":
            origin = "harness"
        elif environ.get("REMOTE_ADDR") not in ("127.0.0.1", "::1"):
            origin = "nodes"  # a node script's aws CLI, through the lab bridge
        elif key_id == "ak":
            origin = "stepfunctions"  # moto's ASL interpreter: Lambda Invoke, events:putEvents
        else:
            origin = "lambdas"
        record = {"origin": origin, "service": service, "operation": operation, "at": time.time()}
        if operation == "GetCommandInvocation":  # to see when a Lambda noticed a node script's end
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            with contextlib.suppress(ValueError, AttributeError):
                record["instance"] = json.loads(body or b"{}").get("InstanceId", "")
        with self.lock:
            self.records.append(record)

    @staticmethod
    def _operation(environ: dict[str, Any], path: str) -> str:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return target.rsplit(".", 1)[-1]
        if "/operation/" in path:
            return path.rsplit("/", 1)[-1]
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if "Action" not in params and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)  # put it back for moto
            params = parse_qs(body.decode("utf-8", "replace"))
        if "Action" in params:
            return params["Action"][0]
        if re.match(r"^/[0-9-]+/functions/[^/]+/invocations", path):
            return "Invoke"
        return f"{environ.get('REQUEST_METHOD')} {path}"

    def window(self) -> "ApiWindow":
        return ApiWindow(self)


class ApiWindow:
    def __init__(self, counter: ApiCounter) -> None:
        self.counter = counter
        self.records: list[dict[str, Any]] = []

    def __enter__(self) -> "ApiWindow":
        with self.counter.lock:
            self.counter.records = []
            self.counter.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.counter.lock:
            self.counter.active = False
            self.records = self.counter.records
            self.counter.records = []


# ---------------------------------------------------------------- daemons, watched from the host
class WatcherProcess:
    """bench/daemon_watch.py in its own process (no GIL shared with moto and the Lambdas: steady 20 ms polls)."""

    def __init__(self, lab: Lab) -> None:
        units = []
        netns = {}
        for node in lab.nodes:
            if not lab.is_booted(node.name):
                continue
            run_lab = lab.root / "nodes" / node.name / "run" / "lab"
            for unit in json.loads((run_lab / "units.json").read_text())["units"]:
                units.append([node.name, unit, str(run_lab / f"{unit}.pid")])
            netns[f"net:[{os.stat(lab.netns_path(node.name)).st_ino}]"] = node.name
        config = {"systemctl": str(lab.bin_dir / "systemctl"), "units": units, "netns": netns,
                  "interval": POLL_SECONDS}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("daemon_watch.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(config) + "\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "ready":
            raise LabError("bench/daemon_watch.py did not start")
        self.instances: list[Instance] = []
        self.calls: list[SystemctlCall] = []

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        out, _ = self.process.communicate("stop\n", timeout=30)
        seen = json.loads(out)
        self.instances = [Instance(**i) for i in seen["instances"]]
        self.calls = [SystemctlCall(**c) for c in seen["calls"]]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def slurmctld_ready_times(lab: Lab, node: str) -> list[float]:
    """Wall times of 'Running as primary controller' in a head node's slurmctld log (host local time)."""
    log = lab.root / "nodes" / node / "var-log-slurm" / "slurmctld.log"
    times = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return times
    for stamp in re.findall(r"^\[([0-9T:.-]+)\] Running as primary controller$", text, re.M):
        with contextlib.suppress(ValueError):
            times.append(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp())
    return times


def restart_windows(lab: Lab, watcher: WatcherProcess, lo: float, hi: float) -> list[dict[str, Any]]:
    """One entry per systemctl start/stop/restart during [lo, hi], extended to slurmctld's readiness."""
    ready = {n.name: slurmctld_ready_times(lab, n.name) for n in lab.nodes if n.role == "head"}
    windows = []
    matched: set[int] = set()
    for call in watcher.calls:
        if call.started < lo or call.started > hi:
            continue
        end = call.ended if call.ended is not None else hi
        entry: dict[str, Any] = {"node": call.node, "action": call.action, "units": call.units,
                                 "start": call.started, "systemctlEnd": end, "end": end}
        spawned = [i for i in watcher.instances if i.node == call.node and i.unit in call.units
                   and call.started - 0.05 <= i.spawned <= end + 0.05]
        previous = [i for i in watcher.instances if i.node == call.node and i.unit in call.units
                    and i.died is not None and call.started - 0.05 <= i.died <= end + POLL_SECONDS * 3]
        if previous and spawned:
            entry["downSeconds"] = max(0.0, max(s.spawned for s in spawned) - min(p.died for p in previous))
        if "slurmctld" in call.units and call.action in ("start", "restart") and spawned:
            after = [t for t in ready.get(call.node, []) if t >= spawned[-1].spawned - 0.01]
            if after:
                entry["readyAfterSpawnSeconds"] = after[0] - spawned[-1].spawned
                entry["end"] = max(end, after[0])
        entry["seconds"] = entry["end"] - entry["start"]
        windows.append(entry)
        matched.update(id(i) for i in spawned)
    # a (re)start the /proc scan missed (a systemctl process shorter than a poll): from the pid files alone
    for instance in watcher.instances:
        if id(instance) in matched or not lo <= instance.spawned <= hi:
            continue
        before = [i for i in watcher.instances if i.node == instance.node and i.unit == instance.unit
                  and i.died is not None and i.died <= instance.spawned + POLL_SECONDS * 3]
        start = min(before[-1].died, instance.spawned) if before else instance.spawned
        entry = {"node": instance.node, "action": "restart (pid file only)" if before else "start (pid file only)",
                 "units": [instance.unit], "start": start, "systemctlEnd": instance.spawned, "end": instance.spawned}
        if instance.unit == "slurmctld":
            after = [t for t in ready.get(instance.node, []) if t >= instance.spawned - 0.01]
            if after:
                entry["readyAfterSpawnSeconds"] = after[0] - instance.spawned
                entry["end"] = after[0]
        entry["seconds"] = entry["end"] - entry["start"]
        windows.append(entry)
    return sorted(windows, key=lambda w: w["start"])


# ---------------------------------------------------------------- SSM invocations
@dataclass
class Invocation:
    node: str
    script: str
    start: float
    end: float
    exit_code: int
    ok: bool

    @property
    def label(self) -> str:
        return f"{self.script} @{self.node}"


def time_ssm_invocations(lab: Lab) -> list[Invocation]:
    """Record every command text the SSM stand-in runs on this lab's nodes (it calls lab.sh)."""
    invocations: list[Invocation] = []
    original = lab.sh

    def timed(node: str, script: str, **kwargs: Any):
        start = time.time()
        done = original(node, script, **kwargs)
        end = time.time()
        # the rendered document: `bash "$d/<script>" "$@"`, munge-credential.sh's mode set as `set -- "$@" 'encode'`
        match = re.search(r'^bash "\$d/([\w.-]+)"', script, re.M)
        mode = re.search(r'^set -- "\$@" \'(encode|decode)\'$', script, re.M)
        name = (match.group(1) + (f" {mode.group(1)}" if mode else "")) if match else "(command)"
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        try:
            ok = bool(json.loads(lines[-1]).get("ok")) if lines else False
        except (ValueError, AttributeError):
            ok = False
        invocations.append(Invocation(node, name, start, end, done.returncode, ok))
        return done

    lab.sh = timed  # this run's lab object only; the SSM stand-in in lab/bridge.py calls lab.sh
    return invocations


# ---------------------------------------------------------------- one run
def state_spans(events: list[dict[str, Any]], start: datetime) -> tuple[dict[str, dict[str, Any]], int]:
    """Per state name: first entered -> last exited (seconds) and how often entered; and the transition count."""
    spans: dict[str, dict[str, Any]] = {}
    transitions = 0
    order = []
    for event in events:
        if event["type"].endswith("StateEntered"):
            transitions += 1
            name = event["stateEnteredEventDetails"]["name"]
            span = spans.setdefault(name, {"entered": event["timestamp"], "exited": None, "count": 0})
            span["count"] += 1
            if name not in order:
                order.append(name)
        elif event["type"].endswith("StateExited"):
            name = event["stateExitedEventDetails"]["name"]
            if name in spans:
                spans[name]["exited"] = event["timestamp"]
    out = {}
    for name in order:
        span = spans[name]
        exited = span["exited"] or span["entered"]
        out[name] = {"seconds": (exited - span["entered"]).total_seconds(),
                     "at": (span["entered"] - start).total_seconds(), "count": span["count"]}
    return out, transitions


# What users see during the pairing: alpha's users submitting to beta, beta's users submitting to beta
PROBES = {"alphaToBeta": ("alpha-head", "beta"), "betaOwnUsers": ("beta-login-1", "beta")}


def run_once(index: int, runs: int, counter: ApiCounter, log: Any, slurm: str) -> dict[str, Any]:
    prefix = f"run {index}/{runs}"
    name = scoped_name(f"bench{index}")  # never another run's lab
    lab = Lab(name, SUBNET, [ClusterSpec("alpha", accounting=True, computes=1, slurm=slurm),
                             ClusterSpec("beta", computes=1, slurm=slurm, logins=1)])
    t0 = time.monotonic()
    say(f"{prefix}: lab {name} up (Slurm {slurm}: alpha accounting + beta, one compute node each, beta a login "
        f"node, {SUBNET})")
    watcher: WatcherProcess | None = None
    try:
        lab.up(progress=lambda line: print(f"  {line}", file=log, flush=True))
        result: dict[str, Any] = {"run": index, "lab": name, "labUpSeconds": round(time.monotonic() - t0, 2)}
        say(f"{prefix}: lab up in {result['labUpSeconds']:.1f}s")
        invocations = time_ssm_invocations(lab)
        t1 = time.monotonic()
        with contextlib.redirect_stdout(log), lab_cloud(lab, TAGS) as aws:
            result["deploySeconds"] = round(time.monotonic() - t1, 2)
            say(f"{prefix}: template deployed into moto, clusters mirrored in {result['deploySeconds']:.1f}s")
            watcher = WatcherProcess(lab)
            sfn = boto3.client("stepfunctions", region_name=aws.region)
            say(f"{prefix}: event: stack beta CREATE_COMPLETE")
            prober = SubmitProber(lab, list(PROBES.values()))
            prober.start()
            with counter.window() as api:
                event_at = time.time()
                arn = harness.route_event(aws.deployment, aws.event_for("beta"))
                if arn is None:
                    raise LabError("no EventBridge rule of the template matches the CREATE_COMPLETE event")
                seen = 0
                while True:
                    description = sfn.describe_execution(executionArn=arn)
                    events = harness.history(arn, aws.region)
                    for event in events[seen:]:
                        if "stateEnteredEventDetails" in event:
                            offset = (event["timestamp"] - description["startDate"]).total_seconds()
                            say(f"{prefix}: {offset:7.2f}s  {event['stateEnteredEventDetails']['name']}")
                    seen = len(events)
                    if description["status"] != "RUNNING":
                        break
                    time.sleep(0.2)
                observed_end = time.time()
            watcher.stop()
            probed_from = time.monotonic() - (time.time() - description["startDate"].timestamp())
            time.sleep(10)  # the probes go on 10 s after the end: does beta stay reachable?
            prober.done.set()
            prober.join()
            events = harness.history(arn, aws.region)
            commands = list(aws.commands)
            instance_of = {node: instance for instance, node in aws.node_of_instance.items()}
        start, stop = description["startDate"], description["stopDate"]
        wall = (stop - start).total_seconds()
        lo, hi = start.timestamp(), stop.timestamp()
        states, transitions = state_spans(events, start)
        restarts = restart_windows(lab, watcher, lo, hi)
        spawned = [i for i in watcher.instances if lo <= i.spawned <= hi]
        inside = union_seconds([(r["start"], r["end"]) for r in restarts], lo, hi)
        restart_scripts = union_seconds([(i.start, i.end) for i in invocations if i.script.split()[0] in RESTARTING_SCRIPTS], lo, hi)
        node_scripts = union_seconds([(i.start, i.end) for i in invocations], lo, hi)
        # When did the Lambda's SSM waiter (GetCommandInvocation) first look after the script had ended?
        seen_at: list[float | None] = []
        for inv in invocations:
            polls = [r["at"] for r in api.records if r.get("instance") == instance_of.get(inv.node) and r["at"] >= inv.end
                     and r["origin"] == "lambdas"]
            seen_at.append(min(polls) if polls else None)
        poll_lag = union_seconds([(i.end, t) for i, t in zip(invocations, seen_at) if t is not None], lo, hi)
        api_counts: dict[str, int] = {}
        by_operation: dict[str, int] = {}
        for record in api.records:
            api_counts[record["origin"]] = api_counts.get(record["origin"], 0) + 1
            if record["origin"] != "harness":
                key = f"{record['origin']}: {record['service']}:{record['operation']}"
                by_operation[key] = by_operation.get(key, 0) + 1
        harness_calls = api_counts.pop("harness", 0)
        result.update({
            "slurm": slurm,
            "alphaToBetaFirstWorksAfterSeconds": prober.first_success(PROBES["alphaToBeta"], probed_from),
            "alphaToBetaRefusedSeconds": prober.outage(PROBES["alphaToBeta"]),
            "betaOwnUsersRefusedSeconds": prober.outage(PROBES["betaOwnUsers"]),
            "betaOwnUsersLongestWaitSeconds": prober.longest_wait(PROBES["betaOwnUsers"]),
            "status": description["status"],
            "error": description.get("error"),
            "wallSeconds": round(wall, 3),
            "eventToObservedEndSeconds": round(observed_end - event_at, 3),
            "nodeScriptsSeconds": round(node_scripts, 3),
            "restartScriptsSeconds": round(restart_scripts, 3),
            "insideRestartsSeconds": round(inside, 3),
            "outsideRestartsSeconds": round(wall - inside, 3),
            "outsideNodeScriptsSeconds": round(wall - node_scripts, 3),
            "ssmPollLagSeconds": round(poll_lag, 3),
            "daemonStarts": len(spawned),
            "stateTransitions": transitions,
            "ssmCommands": len({c["CommandId"] for c in commands}),
            "ssmInvocations": len(commands),
            "apiCalls": sum(api_counts.values()),
            "apiCallsByOrigin": api_counts,
            "apiCallsByOperation": dict(sorted(by_operation.items(), key=lambda kv: (-kv[1], kv[0]))),
            "harnessApiCalls": harness_calls,
            "states": {k: {"seconds": round(v["seconds"], 3), "at": round(v["at"], 3), "count": v["count"]}
                       for k, v in states.items()},
            "invocations": [{"label": i.label, "seconds": round(i.end - i.start, 3), "at": round(i.start - lo, 3),
                             "resultSeenAfterSeconds": round(t - i.end, 3) if t is not None else None,
                             "exitCode": i.exit_code, "ok": i.ok} for i, t in zip(invocations, seen_at)],
            "restarts": [{"node": r["node"], "action": r["action"], "units": r["units"], "at": round(r["start"] - lo, 3),
                          "seconds": round(r["seconds"], 3),
                          "systemctlSeconds": round(r["systemctlEnd"] - r["start"], 3),
                          **({"downSeconds": round(r["downSeconds"], 3)} if "downSeconds" in r else {}),
                          **({"readyAfterSpawnSeconds": round(r["readyAfterSpawnSeconds"], 3)}
                             if "readyAfterSpawnSeconds" in r else {})}
                         for r in restarts],
        })
        say(f"{prefix}: {result['status']} in {wall:.2f}s "
            f"(restarts {inside:.2f}s, outside {wall - inside:.2f}s, {result['apiCalls']} API calls, "
            f"{result['ssmCommands']} SSM commands)")
        if result["status"] != "SUCCEEDED":
            say(f"{prefix}: {description.get('error')}: {description.get('cause', '')[:300]}")
        return result
    finally:
        if watcher is not None:
            watcher.kill()
        lab.down()
        say(f"{prefix}: lab {name} down ({time.monotonic() - t0:.1f}s for the whole run)")


# ---------------------------------------------------------------- report
def median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if not all(isinstance(v, (int, float)) for v in present):
        return present[0] if len(set(present)) == 1 else "mixed"
    return round(statistics.median(present), 3)


def fmt(value: Any, unit: str = "s") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and unit == "s":
        return f"{value:.2f}s"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(title: str, rows: list[tuple[str, list[Any], str]], runs: int) -> None:
    say("")
    say(title)
    width = max([len(r[0]) for r in rows] + [10])
    header = f"  {'':<{width}}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(runs)) + f"{'median':>10}"
    say(header)
    for label, values, unit in rows:
        cells = "".join(f"{fmt(v, unit):>10}" for v in values)
        say(f"  {label:<{width}}{cells}{fmt(median(values), unit) if values else '-':>10}")


def keyed_rows(results: list[dict[str, Any]], field_name: str, value: str = "seconds") -> list[tuple[str, list[Any], str]]:
    """Rows for a per-run dict/list of named things (states, invocations), in first-seen order."""
    labels: list[str] = []
    per_run: list[dict[str, Any]] = []
    for result in results:
        seen: dict[str, Any] = {}
        items = result.get(field_name, {})
        entries = items.items() if isinstance(items, dict) else [(e["label"], e) for e in items]
        for label, entry in entries:
            key, n = label, 2
            while key in seen:  # the same script on the same node twice: number them
                key, n = f"{label} #{n}", n + 1
            seen[key] = entry[value] if isinstance(entry, dict) else entry
            if key not in labels:
                labels.append(key)
        per_run.append(seen)
    return [(label, [run.get(label) for run in per_run], "s" if value.endswith("Seconds") or value == "seconds" else "n") for label in labels]


def restart_rows(results: list[dict[str, Any]]) -> list[tuple[str, list[Any], str]]:
    rows: list[tuple[str, list[Any], str]] = []
    per_run = []
    labels: list[str] = []
    for result in results:
        seen: dict[str, dict[str, Any]] = {}
        for r in result.get("restarts", []):
            base = f"{r['action']} {','.join(r['units'])} @{r['node']}"
            key, n = base, 2
            while key in seen:
                key, n = f"{base} #{n}", n + 1
            seen[key] = r
            if key not in labels:
                labels.append(key)
        per_run.append(seen)
    for label in labels:
        rows.append((label, [run.get(label, {}).get("seconds") for run in per_run], "s"))
        for part, name in (("systemctlSeconds", "systemctl"), ("downSeconds", "old process gone -> new one (+-0.02s)"),
                           ("readyAfterSpawnSeconds", "spawn -> primary")):
            values = [run.get(label, {}).get(part) for run in per_run]
            if any(v is not None for v in values):
                rows.append((f"    {name}", values, "s"))
    return rows


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    runs = len(results)
    col = lambda key: [r.get(key) for r in results]  # noqa: E731
    origins = sorted({o for r in results for o in r.get("apiCallsByOrigin", {})})
    table("Pairing (execution start -> end) and where the time goes", [
        ("status", col("status"), "n"),
        ("wall: execution start -> end", col("wallSeconds"), "s"),
        ("event -> end seen by the bench", col("eventToObservedEndSeconds"), "s"),
        ("inside daemon restarts (floor)", col("insideRestartsSeconds"), "s"),
        ("outside daemon restarts (overhead)", col("outsideRestartsSeconds"), "s"),
        ("in restarting node scripts (SSM)", col("restartScriptsSeconds"), "s"),
        ("in any node script (SSM)", col("nodeScriptsSeconds"), "s"),
        ("outside any node script", col("outsideNodeScriptsSeconds"), "s"),
        ("  script ended, SSM waiter not yet polled", col("ssmPollLagSeconds"), "s"),
        ("daemon (re)starts", col("daemonStarts"), "n"),
        ("alpha sbatch -M beta works, after start", col("alphaToBetaFirstWorksAfterSeconds"), "s"),
        ("  then refused at most (paired)", col("alphaToBetaRefusedSeconds"), "s"),
        ("beta-login-1 sbatch refused at most", col("betaOwnUsersRefusedSeconds"), "s"),
        ("beta-login-1 sbatch longest accept wait", col("betaOwnUsersLongestWaitSeconds"), "s"),
        ("state transitions (*StateEntered)", col("stateTransitions"), "n"),
        ("SSM commands sent", col("ssmCommands"), "n"),
        ("SSM invocations (command x instance)", col("ssmInvocations"), "n"),
        ("AWS API calls reaching moto", col("apiCalls"), "n"),
        *[(f"  from {o}", [r["apiCallsByOrigin"].get(o, 0) if "apiCallsByOrigin" in r else None for r in results], "n")
          for o in origins],
        ("lab up (not part of the pairing)", col("labUpSeconds"), "s"),
        ("deploy into moto (not part of it)", col("deploySeconds"), "s"),
    ], runs)
    table("Time per state (first entered -> last exited)", keyed_rows(results, "states"), runs)
    table("SSM invocations (node script @node, as run by the SSM stand-in)", keyed_rows(results, "invocations"), runs)
    table("SSM invocations: script ended -> the Lambda's next GetCommandInvocation (waiter Delay=1)",
          keyed_rows(results, "invocations", "resultSeenAfterSeconds"), runs)
    table("Daemon restarts (systemctl start -> end, slurmctld: -> 'Running as primary controller')",
          restart_rows(results), runs)
    table("AWS API calls per pairing, by origin: service:operation", keyed_rows(results, "apiCallsByOperation", "n"), runs)

    scalar = ["alphaToBetaFirstWorksAfterSeconds", "alphaToBetaRefusedSeconds", "betaOwnUsersRefusedSeconds",
              "betaOwnUsersLongestWaitSeconds", "wallSeconds", "eventToObservedEndSeconds", "insideRestartsSeconds", "outsideRestartsSeconds",
              "restartScriptsSeconds", "nodeScriptsSeconds", "outsideNodeScriptsSeconds", "ssmPollLagSeconds", "daemonStarts",
              "stateTransitions", "ssmCommands", "ssmInvocations", "apiCalls", "labUpSeconds", "deploySeconds"]
    summary = {key: median(col(key)) for key in scalar}
    summary["apiCallsByOrigin"] = {o: median([r["apiCallsByOrigin"].get(o, 0) if "apiCallsByOrigin" in r else None
                                              for r in results]) for o in origins}
    summary["states"] = {label: median(values) for label, values, _ in keyed_rows(results, "states")}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="pairings to time, each in a fresh lab (default 3)")
    parser.add_argument("--log", type=Path, default=LOG_FILE, help=f"Lambda logs and lab progress (default {LOG_FILE})")
    parser.add_argument("--slurm", default=roots.DEFAULT_RELEASE, choices=list(roots.RELEASES),
                        help=f"Slurm release of both clusters (default {roots.DEFAULT_RELEASE}, ParallelCluster 3.14's)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        say("bench/pairing.py needs root (the lab uses network namespaces and bind mounts); see lab/README.md")
        return 2
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per moto request otherwise
    counter = ApiCounter()
    counter.install()
    say(f"pairing benchmark: {args.runs} run(s), labs bench1..bench{args.runs} on {SUBNET}; Lambda logs: {args.log}")
    results = []
    with args.log.open("w") as log:
        for index in range(1, args.runs + 1):
            try:
                results.append(run_once(index, args.runs, counter, log, args.slurm))
            except (LabError, TimeoutError) as error:
                say(f"run {index}/{args.runs}: FAILED: {error}")
                results.append({"run": index, "status": "ERROR", "error": str(error)})
    summary = report(results)
    say("")
    print(json.dumps({"benchmark": "pairing", "runs": results, "median": summary}, default=str), file=CONSOLE, flush=True)
    return 0 if all(r.get("status") == "SUCCEEDED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
