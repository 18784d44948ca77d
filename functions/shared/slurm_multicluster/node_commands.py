"""Run the node scripts on cluster nodes through SSM Run Command and read their JSON result.

Each script is sent as its own SSM Command document (``slurm_multicluster.ssm_documents``) with typed
parameters, checked here first and again by SSM against the document's patterns before any node sees them.
The functions may send only these documents (template.yaml, NodeCommandPolicy). No secret ever goes into a
parameter.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from slurm_multicluster import ssm_documents
from slurm_multicluster.errors import NodeCommandFailed, NodeUnreachable
from slurm_multicluster.settings import settings

logger = Logger(child=True)

SSM_POLICY_HINT = (
    "add the AWS managed policy AmazonSSMManagedInstanceCore to the cluster's "
    "HeadNode/Iam/AdditionalIamPolicies (and SlurmQueues/Iam for compute nodes), update the cluster, "
    "and check the instance shows as Online in Systems Manager Fleet Manager"
)


DOCUMENTS_HINT = (
    "deploy node-documents.yaml in that region with the deployment's DeploymentId "
    "(README, Deploy: every FederationRegions region other than the deployment's own)"
)
Parameters = dict[str, str | int | bool]  # a script's document parameters by name (ssm_documents)


REDACTED_FIELDS = {"credential"}  # a munge credential authenticates for minutes: keep it out of logs


def loggable(result: dict[str, Any]) -> dict[str, Any]:
    """A script result fit for logs: fingerprints and facts only, credentials redacted."""
    return {key: "<redacted>" if key in REDACTED_FIELDS else value for key, value in result.items()}


@dataclass(frozen=True)
class NodeResult:
    """What one node's script reported."""

    instance_id: str
    status: str
    exit_code: int
    result: dict[str, Any]
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.status == "Success" and self.result.get("ok") is True

    @property
    def gone(self) -> bool:
        """The instance was shut down before or while its script ran (run_on_fleet only)."""
        return self.status == INSTANCE_GONE


def summary(results: dict[str, NodeResult]) -> dict[str, Any]:
    """Each node's result cut to what a workflow's state keeps (no stderr, no credentials)."""
    keep = ("changed", "sha256", "restarted", "stagedFiles", "restored", "found", "gone")
    return {i: {k: r.result[k] for k in keep if k in r.result} for i, r in results.items()}


def and_then(first: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """A node's summary after two runs of a step on it (a held slurmctld started by the second): the first's,
    with the units the later run restarted added to its ``restarted``."""
    restarted = first.get("restarted", [])
    return {**first, "restarted": [*restarted, *(u for u in later.get("restarted", []) if u not in restarted)]}


def parse_result(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty stdout line, or an explanatory stand-in when there is none."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return {"ok": False, "error": "the script printed no result"}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"ok": False, "error": "the script's last line is not JSON"}
    return result if isinstance(result, dict) else {"ok": False, "error": "the script's result is not an object"}


# How many backup sets a node keeps after a successful change (KeepBackups of the scripts that take it): the
# newest ones; older sets hold old munge keys, an evicted cluster's too (node_scripts/README.md, "Backups").
NODE_BACKUPS_KEPT = 3


def _with_backups_kept(script: str, parameters: Parameters) -> Parameters:
    """The parameters, with KeepBackups set to NODE_BACKUPS_KEPT for a script that prunes its node's backups."""
    if "KeepBackups" in parameters or all(p.name != "KeepBackups" for p in ssm_documents.document(script).parameters):
        return parameters
    return {**parameters, "KeepBackups": str(NODE_BACKUPS_KEPT)}


# SendCommand accepts at most 50 InstanceIds (AWS API reference; moto accepts more): bigger fleets go in batches.
SEND_COMMAND_MAX_INSTANCES = 50


# ---------------------------------------------------------------- fleets: nodes come and go while scripts run
# ParallelCluster launches and terminates compute nodes all the time (login pools scale too). A node that is shut
# down before or while its script runs is not a failure: it no longer exists to run the wrong key. EC2 says so,
# not SSM (SendCommand refuses shutting-down and terminated instances with InvalidInstanceId, and an invocation
# on an instance that went away stays InProgress until its timeout).
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
INSTANCE_GONE = "InstanceGone"  # NodeResult.status of a node that went away (never an SSM status)
GONE_CHECK_SECONDS = 15.0  # how often collect() asks EC2 whether an instance it still waits on exists
DESCRIBE_FILTER_VALUES = 200  # DescribeInstances: values per filter, at most
GoneCheck = Callable[[list[str]], set[str]]


def gone_instances(ec2: Any, instance_ids: list[str]) -> set[str]:
    """Those of ``instance_ids`` that are shutting down, terminated or stopped, or no longer listed at all."""
    states: dict[str, str] = {}
    paginator = ec2.get_paginator("describe_instances")
    for start in range(0, len(instance_ids), DESCRIBE_FILTER_VALUES):
        batch = instance_ids[start:start + DESCRIBE_FILTER_VALUES]
        for page in paginator.paginate(Filters=[{"Name": "instance-id", "Values": batch}]):
            states.update({i["InstanceId"]: i["State"]["Name"] for r in page["Reservations"] for i in r["Instances"]})
    return {i for i in instance_ids if states.get(i, "terminated") in GONE_STATES}


def fleet_check(ec2: Any) -> GoneCheck:
    """The ``gone_check`` of a run over compute and login nodes, which may go away (run_on_fleet)."""
    return lambda instance_ids: gone_instances(ec2, instance_ids)


@dataclass(frozen=True)
class SentCommand:
    """A node script in flight, as one SSM command per batch of instances: collect() waits for every invocation."""

    ssm: Any
    command_ids: dict[str, str]  # instance id -> the command id of its batch
    script: str
    instance_ids: list[str]
    timeout_seconds: int
    pending: set[str] = field(default_factory=set, compare=False)  # instances without a final status yet
    gone_check: GoneCheck | None = field(default=None, compare=False)  # set by run_on_fleet
    gone: set[str] = field(default_factory=set, compare=False)  # instances gone before SSM could take the command


# ---------------------------------------------------------------- the Lambda invocation's deadline
# A Lambda must give up (and cancel what it sent) before its own timeout kills it: otherwise the workflow's
# compensation would run while a node script is still half way through its change.
LAMBDA_SAFETY_MARGIN_SECONDS = 15  # cancelling, logging and returning the error after collect() gives up


@dataclass
class Invocation:
    """One Lambda invocation: when its node commands must be done, and the commands still in flight."""

    deadline: float | None  # time.monotonic() by which collect() gives up; None: no Lambda context
    in_flight: list[SentCommand] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# A contextvar, not a global: the lab runs several Lambdas at once in one process (threads copy it explicitly).
_invocation: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("node_commands_invocation",
                                                                                 default=None)


@contextlib.contextmanager
def invocation(context: Any, margin_seconds: float = LAMBDA_SAFETY_MARGIN_SECONDS) -> Iterator[Invocation]:
    """The scope of one Lambda invocation (lambda_step.pairing_step): collect() gives up ``margin_seconds`` before
    the context's remaining time runs out, and when the step fails, every command still in flight is cancelled
    before the exception propagates."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    deadline = time.monotonic() + remaining() / 1000 - margin_seconds if callable(remaining) else None
    scope = Invocation(deadline)
    token = _invocation.set(scope)
    try:
        yield scope
    except BaseException:
        with scope.lock:
            left = list(scope.in_flight)
        for sent in left:
            cancel(sent, "the step failed")
        raise
    finally:
        _invocation.reset(token)


def _track(sent: SentCommand) -> None:
    scope = _invocation.get()
    if scope is not None:
        with scope.lock:
            scope.in_flight.append(sent)


def _untrack(sent: SentCommand) -> None:
    scope = _invocation.get()
    if scope is not None:
        with scope.lock:
            if not sent.pending:
                scope.in_flight[:] = [other for other in scope.in_flight if other is not sent]


def cancel(sent: SentCommand, why: str) -> list[str]:
    """Cancel the command on every instance that has no final status yet (best effort: a cancel that fails is
    logged, never raised over the error being reported). Returns the instances it was cancelled on."""
    by_command: dict[str, list[str]] = {}
    for instance_id in sorted(sent.pending):
        by_command.setdefault(sent.command_ids[instance_id], []).append(instance_id)
    cancelled: list[str] = []
    for command_id, instance_ids in by_command.items():
        try:
            sent.ssm.cancel_command(CommandId=command_id, InstanceIds=instance_ids)
        except Exception as error:  # the original failure matters more than a failed cancel
            logger.warning("could not cancel node script", extra={"script": sent.script, "command_id": command_id,
                                                                  "instances": instance_ids, "error": str(error)})
            continue
        logger.warning("cancelled node script", extra={"script": sent.script, "command_id": command_id,
                                                       "instances": instance_ids, "why": why})
        cancelled += instance_ids
    sent.pending.clear()
    _untrack(sent)
    return cancelled


def send_script(
    ssm: Any,
    instance_ids: list[str],
    script: str,
    parameters: Parameters,
    *,
    timeout_seconds: int,
    comment: str,
    deployment_id: str | None = None,
    gone_check: GoneCheck | None = None,
) -> SentCommand:
    """Send a node script's document, with ``parameters`` (checked first, InvalidInput), to every instance
    (one SSM command per 50 instances) without waiting for it. The deployment id defaults to the settings'.

    With ``gone_check`` (run_on_fleet), instances of a refused batch that it reports gone are left out and the
    rest sent again; without it, or when none is gone, the refusal is NodeUnreachable (what was already sent of
    the other batches is cancelled first)."""
    document = ssm_documents.document_name(deployment_id or settings().deployment_id, script)
    sent_parameters = ssm_documents.parameters(
        script, {**_with_backups_kept(script, parameters), ssm_documents.EXECUTION_TIMEOUT: str(timeout_seconds)})
    sent = SentCommand(ssm, {}, script, [], timeout_seconds, gone_check=gone_check)
    _track(sent)
    for start in range(0, len(instance_ids), SEND_COMMAND_MAX_INSTANCES):
        batch = instance_ids[start:start + SEND_COMMAND_MAX_INSTANCES]
        while batch:
            try:
                command = ssm.send_command(
                    InstanceIds=batch,
                    DocumentName=document,
                    DocumentVersion="$LATEST",  # a stack update's new version at once, whichever is the default
                    Comment=comment[:100],
                    TimeoutSeconds=60,
                    Parameters=sent_parameters,
                )["Command"]
                break
            except ClientError as error:
                code = error.response["Error"]["Code"]
                gone = gone_check(batch) if gone_check and code == "InvalidInstanceId" else set()
                if gone:
                    logger.info("instances gone before the node script reached them",
                                extra={"script": script, "instances": sorted(gone)})
                    sent.gone.update(gone)
                    batch = [i for i in batch if i not in gone]
                    continue
                cancel(sent, "another batch was refused")
                if code in ("InvalidInstanceId", "InvalidInstanceInformationFilterValue"):
                    raise NodeUnreachable(
                        f"SSM cannot reach {', '.join(batch)} to run {script}: {SSM_POLICY_HINT}"
                    ) from error
                if code == "InvalidDocument":
                    raise NodeUnreachable(
                        f"SSM has no document {document} in {ssm.meta.region_name} to run {script}: {DOCUMENTS_HINT}"
                    ) from error
                raise
        if not batch:
            continue
        logger.info("sent node script", extra={"script": script, "document": document,
                                                "command_id": command["CommandId"], "instances": batch})
        sent.command_ids.update(dict.fromkeys(batch, command["CommandId"]))
        sent.instance_ids.extend(batch)
        sent.pending.update(batch)
    _untrack(sent)  # only when nothing is in flight (every instance was gone)
    return sent


# Most scripts finish in well under a second: poll soon, then back off (botocore's command_executed waiter
# polls no faster than once a second, which was a third of a pairing's wall time).
FIRST_POLL_SECONDS = 0.2
MAX_POLL_SECONDS = 2.0
FINAL_STATUSES = {"Success", "Failed", "Cancelled", "TimedOut", "Undeliverable", "Terminated", "InvalidPlatform",
                  "AccessDenied", "DeliveryTimedOut", "ExecutionTimedOut"}


SSM_DELIVERY_SECONDS = 60  # beyond the script's own executionTimeout: SSM delivering it to the agent


class _DeadlinePassed(Exception):
    pass


def _final_invocation(sent: SentCommand, instance_id: str, deadline: float) -> dict[str, Any]:
    delay = FIRST_POLL_SECONDS
    checked = time.monotonic()
    while True:
        try:
            invocation = sent.ssm.get_command_invocation(CommandId=sent.command_ids[instance_id], InstanceId=instance_id)
            if invocation["Status"] in FINAL_STATUSES:
                return invocation
        except ClientError as error:
            if error.response["Error"]["Code"] != "InvocationDoesNotExist":  # not registered yet: keep polling
                raise
        if sent.gone_check and time.monotonic() - checked >= GONE_CHECK_SECONDS:
            checked = time.monotonic()
            if sent.gone_check([instance_id]):
                return {"Status": INSTANCE_GONE}
        left = deadline - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed
        time.sleep(min(delay, left))
        delay = min(delay * 2, MAX_POLL_SECONDS)


def deadline_of(sent: SentCommand, sent_at: float | None = None) -> tuple[float, str]:
    """When collect() gives up on ``sent`` (time.monotonic()), and why: the command's own timeout plus SSM's
    delivery, or the Lambda invocation's remaining time less the safety margin, whichever comes first."""
    command = (time.monotonic() if sent_at is None else sent_at) + sent.timeout_seconds + SSM_DELIVERY_SECONDS
    scope = _invocation.get()
    if scope is not None and scope.deadline is not None and scope.deadline < command:
        return scope.deadline, "before the Lambda's own timeout"
    return command, f"the script's {sent.timeout_seconds} s plus {SSM_DELIVERY_SECONDS} s for SSM to deliver it"


def collect(sent: SentCommand) -> dict[str, NodeResult]:
    """Wait (with a deadline) for every invocation of a sent command and parse each node's JSON result.

    The deadline is the command's timeout, or the Lambda invocation's remaining time (less a safety margin) when
    that comes first. When it passes, or anything fails while invocations are still running, the command is
    cancelled on those instances before the error propagates (NodeCommandFailed names them)."""
    started = time.monotonic()
    deadline, reason = deadline_of(sent, started)
    results = {}
    try:
        for instance_id in sent.instance_ids:
            invocation = _final_invocation(sent, instance_id, deadline)
            sent.pending.discard(instance_id)
            results[instance_id] = _node_result(sent, instance_id, invocation)
    except _DeadlinePassed:
        waited = max(0, round(time.monotonic() - started))
        waiting = sorted(sent.pending)
        cancelled = cancel(sent, "deadline")
        raise NodeCommandFailed(
            f"{sent.script} did not finish within {waited} s ({reason}) on {', '.join(waiting)}; "
            + (f"cancelled the command on {', '.join(cancelled)}" if cancelled else "could not cancel the command")
        ) from None
    except BaseException:
        cancel(sent, "collect failed")
        raise
    _untrack(sent)
    if sent.gone_check:  # a node that failed because it was going away is gone, not failed
        failed = [i for i, r in results.items() if not r.ok and not r.gone]
        for instance_id in sent.gone_check(failed) if failed else set():
            results[instance_id] = _node_result(sent, instance_id, {"Status": INSTANCE_GONE})
    for instance_id in sorted(sent.gone):
        results[instance_id] = _node_result(sent, instance_id, {"Status": INSTANCE_GONE})
    return results


def _node_result(sent: SentCommand, instance_id: str, invocation: dict[str, Any]) -> NodeResult:
    """What one node reported, parsed and logged (credentials redacted)."""
    gone = invocation["Status"] == INSTANCE_GONE
    result = NodeResult(
        instance_id=instance_id,
        status=invocation["Status"],
        exit_code=invocation.get("ResponseCode", -1),
        result={"ok": False, "gone": True, "error": "the instance was shut down (ParallelCluster scaled it down)"}
        if gone else parse_result(invocation.get("StandardOutputContent", "")),
        stderr_tail=invocation.get("StandardErrorContent", "")[-2000:],
    )
    logger.info(
        "node script finished",
        extra={"script": sent.script, "instance": instance_id, "status": result.status,
               "result": loggable(result.result)},
    )
    return result


def run_script(
    ssm: Any,
    instance_ids: list[str],
    script: str,
    parameters: Parameters,
    *,
    timeout_seconds: int,
    comment: str,
    deployment_id: str | None = None,
    gone_check: GoneCheck | None = None,
) -> dict[str, NodeResult]:
    """Run a node script on each instance (one SSM command per 50), wait for every invocation, return results."""
    if not instance_ids:
        return {}
    return collect(send_script(ssm, instance_ids, script, parameters, timeout_seconds=timeout_seconds,
                               comment=comment, deployment_id=deployment_id, gone_check=gone_check))


def raise_failures(script: str, results: dict[str, NodeResult]) -> dict[str, NodeResult]:
    """Raise NodeCommandFailed naming every node whose script did not report ok (a node that is gone did not
    fail); else return the results."""
    failed = [r for r in results.values() if not r.ok and not r.gone]
    if failed:
        details = "; ".join(
            f"{r.instance_id}: {r.result.get('error') or r.status} (exit {r.exit_code})" for r in failed
        )
        raise NodeCommandFailed(f"{script} failed on {details}")
    return results


def run_script_checked(ssm: Any, instance_ids: list[str], script: str, parameters: Parameters,
                       **kwargs: Any) -> dict[str, NodeResult]:
    """Like run_script, but raise NodeCommandFailed naming every node whose script did not report ok."""
    return raise_failures(script, run_script(ssm, instance_ids, script, parameters, **kwargs))


def run_on_fleet(ssm: Any, ec2: Any, instance_ids: list[str], script: str, parameters: Parameters,
                 **kwargs: Any) -> dict[str, NodeResult]:
    """run_script_checked for compute and login nodes, which come and go: a node shut down before or while its
    script runs is returned with ``gone`` set (EC2 says so), not raised; any other failure raises."""
    return run_script_checked(ssm, instance_ids, script, parameters,
                              gone_check=fleet_check(ec2), **kwargs)
