"""Munge key rotation of a three-cluster federation on real daemons: the real rotation ASL in moto, the real
Lambdas, the real node scripts on lab nodes through the SSM seam, real munged/slurmctld/slurmd/slurmdbd/MariaDB.

alpha (accounting), beta and gamma, each with a compute node, are paired by the pairing workflow; then one
rotation succeeds (with jobs running and queued across it) and one fails because gamma's slurmctld dies right
after the switch, which must bring the whole federation back to the key it had.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
import pytest

from lab import ClusterSpec, Lab
from lab import cloud as aws_harness
from lab.bridge import LabCloud, lab_cloud
from lab_helpers import sha256, submit, wait_job_completed, wait_until
from pairing_helpers import (
    opt_in, ENDING, end_job_before_node_switches,
    ALPHA_TAGS, BETA_TAGS, FEDERATION, KEY, SHARED_KEY, assert_absent, events_queue, fresh_lab,
    jobs_in_every_direction, key_bytes, published, sacctmgr_clusters, wait_job_completed_on,
)

pytestmark = pytest.mark.lab

CLUSTERS = ("alpha", "beta", "gamma")
SECRET = f"slurm-multicluster/default/{FEDERATION}/munge-key"
NODES = [f"{c}-{role}" for c in CLUSTERS for role in ("head", "compute-1")]
HELD = "while [ ! -e /tmp/release-{tag} ]; do sleep 0.2; done; hostname"  # runs until the test releases it


@dataclass
class Rotation:
    """One rotation run and what was observed around it (measured in the fixture, asserted by the tests)."""

    result: dict[str, Any]
    seconds: float
    before_sha: str
    fingerprints: dict[str, str] = field(default_factory=dict)  # node:path -> sha256 after the rotation
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)


@dataclass
class Federation:
    lab: Lab
    cloud: LabCloud
    keys: list[bytes]  # every munge key that ever existed here, for the secret scan (never printed)
    logs: io.StringIO
    executions: list[str] = field(default_factory=list)
    queue: str = ""


@contextlib.contextmanager
def lambda_logs(buffer: io.StringIO) -> Iterator[None]:
    """Capture every Lambda log line, extras included (Powertools logs to the service's logger and its
    children), and anything printed, for the secret scan."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    service = logging.getLogger("slurm-multicluster")
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(LambdaPowertoolsFormatter())
    service.addHandler(handler)
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        service.removeHandler(handler)


def fingerprints(lab: Lab) -> dict[str, str]:
    found = {f"{n}:{KEY}": sha256(lab, n, KEY) for n in NODES}
    found.update({f"{c}-head:{SHARED_KEY}": sha256(lab, f"{c}-head", SHARED_KEY) for c in CLUSTERS})
    return found


def current_version() -> tuple[str, bytes]:
    value = boto3.client("secretsmanager", region_name="us-east-1").get_secret_value(
        SecretId=SECRET, VersionStage="AWSCURRENT")
    return value["VersionId"], base64.b64decode(value["SecretString"])


def labels() -> dict[str, list[str]]:
    described = boto3.client("secretsmanager", region_name="us-east-1").describe_secret(SecretId=SECRET)
    return {version: sorted(stages) for version, stages in described["VersionIdsToStages"].items()}


def job_state(lab: Lab, node: str, cluster: str, job_id: int) -> str:
    """The job's state, asked of its own cluster's slurmctld ("" when it does not answer right now).

    Not with -M: that resolves the cluster through slurmdbd, which knows no ControlHost for a cluster whose
    slurmctld has just restarted and not yet registered again."""
    out = lab.exec(f"{cluster}-head", ["scontrol", "show", "job", str(job_id), "--oneliner"]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out)).get("JobState", "")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(lab: Lab, node: str, tag: str) -> None:
    lab.exec(node, ["touch", f"/tmp/release-{tag}"], check=True)


# ---------------------------------------------------------------- the federation, paired by the pairing workflow


@pytest.fixture(scope="module")
def federation(lab_host) -> Iterator[Federation]:
    """alpha, beta, gamma paired one after the other by the pairing workflow, as clusters join in real life:
    beta is created tagged; gamma opts in (its stack gets the federation tag) once beta is a member."""
    with fresh_lab("rotwf", "10.252.1.0/24", [ClusterSpec(c, accounting=c == "alpha", computes=1) for c in CLUSTERS]) \
            as lab, lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS},
                              # 45 s: after a key switch a loaded machine's slurmctld took over 20 s to
                              # reconnect to slurmdbd ("gamma has no ControlHost"); verification polls, so a
                              # passing run does not wait longer
                              parameters={"VerifyDeadlineSeconds": "45"}) as cloud:
        keys = [key_bytes(lab, f"{c}-head") for c in CLUSTERS]  # each cluster's own key before the pairing
        for member in ("beta", "gamma"):
            if member == "gamma":
                opt_in(cloud, "gamma")
            result = cloud.run(cloud.event_for(member))
            assert result["status"] == "SUCCEEDED", f"pairing {member}: {result.get('cause')}"
        yield Federation(lab, cloud, keys, io.StringIO(), queue=events_queue())


def rotate(fed: Federation, on_event=None) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    with lambda_logs(fed.logs):
        result = fed.cloud.rotate(FEDERATION, on_event=on_event)
    fed.executions.append(result["executionArn"])
    return result, time.monotonic() - started


# ---------------------------------------------------------------- a rotation with jobs running and queued


@pytest.fixture(scope="module")
def rotated(federation) -> Rotation:
    lab = federation.lab
    before_version, before_key = current_version()
    federation.keys.append(before_key)
    jobs = {
        # one job running on each cluster's only compute node, held until after the rotation ...
        "running:alpha": ("alpha-head", "alpha", submit(lab, "alpha-head", "--wrap", HELD.format(tag="alpha"))),
        "running:beta": ("beta-head", "beta", submit(lab, "beta-head", "--wrap", HELD.format(tag="beta"))),
        # ... but gamma's, released once gamma's head node runs the new key and right before its compute node
        # switches: it ends while the two disagree (end_job_before_node_switches)
        "ending:gamma": ("gamma-head", "gamma", submit(lab, "gamma-head", "--wrap",
                                                       ENDING.format(tag="gamma"))),
    }
    for name, (node, cluster, job) in jobs.items():
        wait_until(lambda: job_state(lab, node, cluster, job) == "RUNNING", 30, f"{name} running")
    # ... so these queue behind them: a local job and one submitted from another cluster
    jobs["queued:beta"] = ("beta-head", "beta", submit(lab, "beta-head", "--wrap", "hostname"))
    jobs["queued:gamma->alpha"] = ("gamma-head", "alpha", submit(lab, "gamma-head", "--clusters=alpha", "--wrap", "hostname"))
    seen: dict[str, set[str]] = {name: set() for name in jobs}
    released: list[str] = []
    federation.cloud.before_command = end_job_before_node_switches(lab, "gamma", jobs["ending:gamma"][2], released)

    def watch(event: dict[str, Any]) -> None:  # what Slurm reports for the jobs while the rotation runs
        entered = event.get("stateEnteredEventDetails", {}).get("name")
        if entered in ("SwitchAccountingMember", "SwitchMembers", "TestFederation", "FinishRotation"):
            for name, (node, cluster, job) in jobs.items():
                seen[name].add(job_state(lab, node, cluster, job) or "(slurmctld not answering)")

    try:
        result, seconds = rotate(federation, on_event=watch)
    finally:
        federation.cloud.before_command = None
    rotation = Rotation(result, seconds, sha256_bytes(before_key))
    rotation.observed["before_version"] = before_version
    rotation.observed["labels"] = labels()
    rotation.observed["states_during_rotation"] = {name: sorted(states) for name, states in seen.items()}
    rotation.observed["states_right_after"] = {n: job_state(lab, *jobs[n]) for n in jobs}
    rotation.observed["released_during_rotation"] = released
    if result["status"] == "SUCCEEDED":
        version, key = current_version()
        federation.keys.append(key)
        rotation.observed["current_version"], rotation.observed["current_sha"] = version, sha256_bytes(key)
    rotation.fingerprints = fingerprints(lab)
    for cluster in ("alpha", "beta"):
        release(lab, f"{cluster}-compute-1", cluster)
    for name, (node, cluster, job) in jobs.items():
        rotation.jobs[name] = wait_job_completed_on(lab, node, cluster, job)
    rotation.jobs.update(jobs_in_every_direction(lab, CLUSTERS))
    rotation.observed["sacctmgr"] = sacctmgr_clusters(lab, "alpha-head")
    rotation.observed["events"] = published(federation.queue)
    return rotation


def test_rotation_succeeds_through_the_secrets_manager_protocol(rotated):
    assert rotated.result["status"] == "SUCCEEDED", rotated.result.get("cause")
    output = json.loads(rotated.result["output"])
    assert output["previousSha256"] == rotated.before_sha
    assert output["sha256"] == rotated.observed["current_sha"] != rotated.before_sha
    assert rotated.observed["labels"] == {rotated.observed["before_version"]: ["AWSPREVIOUS"],
                                          output["versionId"]: ["AWSCURRENT"]}
    assert [e["detail-type"] for e in rotated.observed["events"]] == ["Slurm Munge Key Rotated"]


def test_every_node_of_every_cluster_runs_the_new_key(rotated):
    assert set(rotated.fingerprints.values()) == {rotated.observed["current_sha"]}, rotated.fingerprints


def test_jobs_run_in_every_direction_after_the_rotation(rotated, federation):
    for src in CLUSTERS:
        for dst in CLUSTERS:
            if src != dst:
                assert rotated.jobs[f"{src}->{dst}"]["NodeList"] == f"{dst}-compute-1"
    assert set(rotated.observed["sacctmgr"]) == set(CLUSTERS)
    assert all(rotated.observed["sacctmgr"][c] == federation.lab.head(c).ip for c in CLUSTERS)


def test_jobs_running_across_the_switch_keep_running_and_complete(rotated):
    for cluster in ("alpha", "beta"):
        name = f"running:{cluster}"
        assert rotated.observed["states_during_rotation"][name] == ["RUNNING"]
        assert rotated.observed["states_right_after"][name] == "RUNNING"
        assert rotated.jobs[name]["ExitCode"] == "0:0"


def test_a_job_ending_while_its_cluster_switches_keys_completes_and_is_not_left_running(rotated):
    """Its slurmstepd reports the end to slurmctld while munged or slurmctld restart on the other key: the report
    must still arrive (slurmstepd retries with a fresh credential), so the job is COMPLETED, not stuck RUNNING
    or failed by the node's re-registration."""
    name = "ending:gamma"
    assert rotated.observed["released_during_rotation"], "the job was not released during gamma's switch"
    assert set(rotated.observed["states_during_rotation"][name]) <= {
        "RUNNING", "COMPLETING", "COMPLETED", "(slurmctld not answering)"}
    assert rotated.jobs[name]["JobState"] == "COMPLETED"  # within wait_job_completed_on's deadline
    assert rotated.jobs[name]["ExitCode"] == "0:0"


def test_jobs_queued_before_the_rotation_run_after_it(rotated):
    for name in ("queued:beta", "queued:gamma->alpha"):
        assert rotated.observed["states_during_rotation"][name] == ["PENDING"]
        assert rotated.jobs[name]["JobState"] == "COMPLETED"
        assert rotated.jobs[name]["ExitCode"] == "0:0"


def test_a_compute_node_booted_after_the_rotation_gets_the_new_key(rotated, federation):
    lab = federation.lab
    lab.exec("beta-compute-1", ["rm", "-f", KEY], check=True)  # a new instance: no key until boot copies it
    lab.reboot("beta-compute-1")
    assert sha256(lab, "beta-compute-1", KEY) == rotated.observed["current_sha"]
    job = submit(lab, "gamma-head", "--clusters=beta", "--wrap", "hostname")
    assert wait_job_completed_on(lab, "gamma-head", "beta", job)["NodeList"] == "beta-compute-1"


# ---------------------------------------------------------------- a member's slurmctld dies after the switch


@pytest.fixture(scope="module")
def rolled_back(rotated, federation) -> Rotation:
    lab = federation.lab
    before_version, before_key = current_version()
    before_labels = labels()
    queued = {"running": submit(lab, "beta-head", "--wrap", HELD.format(tag="beta-2"))}
    wait_until(lambda: job_state(lab, "beta-head", "beta", queued["running"]) == "RUNNING", 30, "beta job running")
    queued["queued"] = submit(lab, "alpha-head", "--clusters=beta", "--wrap", "hostname")
    killed: list[str] = []

    run_on_node = lab.sh

    def kill_gamma_slurmctld_before_its_test(node: str, text: str, **kw: Any):
        # every member has switched and TestFederation's check reaches gamma: its slurmctld has just died
        # (SIGKILL, as in a crash). Injected at the SSM seam, so the fault always precedes the check.
        if node == "gamma-head" and 'bash "$d/verify-member.sh"' in text and not killed:
            lab.systemctl("gamma-head", "kill", "--signal=SIGKILL", "slurmctld")
            killed.append(time.strftime("%T"))
        return run_on_node(node, text, **kw)

    lab.sh = kill_gamma_slurmctld_before_its_test
    try:
        result, seconds = rotate(federation)
    finally:
        del lab.sh  # back to the class's method
    rotation = Rotation(result, seconds, sha256_bytes(before_key))
    rotation.observed.update(before_version=before_version, before_labels=before_labels, labels=labels(),
                             killed=killed, current=current_version()[0])
    pending = [v for v in rotation.observed["labels"] if v not in before_labels]
    if pending:  # the discarded key, read back only for the secret scan
        value = boto3.client("secretsmanager", region_name="us-east-1").get_secret_value(
            SecretId=SECRET, VersionId=pending[0])["SecretString"]
        federation.keys.append(base64.b64decode(value))
    rotation.observed["pending_versions"] = pending
    rotation.fingerprints = fingerprints(lab)
    rotation.observed["gamma_slurmctld"] = lab.systemctl("gamma-head", "is-active", "slurmctld", check=False).stdout.strip()
    release(lab, "beta-compute-1", "beta-2")
    rotation.jobs["running"] = wait_job_completed_on(lab, "beta-head", "beta", queued["running"])
    rotation.jobs["queued"] = wait_job_completed_on(lab, "alpha-head", "beta", queued["queued"])
    rotation.jobs.update(jobs_in_every_direction(lab, CLUSTERS))
    rotation.observed["events"] = published(federation.queue)
    return rotation


def test_a_member_whose_slurmctld_fails_after_the_switch_fails_the_rotation_naming_it(rolled_back):
    assert rolled_back.observed["killed"], "the fault was never injected"
    assert rolled_back.result["status"] == "FAILED"
    assert rolled_back.result["error"] == "TestFederationFailed"
    assert "gamma" in rolled_back.result["cause"]
    assert "ROLLBACK INCOMPLETE" not in rolled_back.result["cause"]
    kinds = [e["detail-type"] for e in rolled_back.observed["events"]]  # the queue may still hold the first one
    assert kinds.count("Slurm Munge Key Rotation Failed") == 1 and kinds.count("Slurm Munge Key Rotated") <= 1


def test_after_the_rollback_awscurrent_is_still_the_old_key(rolled_back):
    assert rolled_back.observed["current"] == rolled_back.observed["before_version"]
    (pending,) = rolled_back.observed["pending_versions"]
    assert rolled_back.observed["labels"] == {**rolled_back.observed["before_labels"], pending: []}


def test_after_the_rollback_every_node_runs_the_old_key_again(rolled_back):
    assert set(rolled_back.fingerprints.values()) == {rolled_back.before_sha}, rolled_back.fingerprints
    assert rolled_back.observed["gamma_slurmctld"] == "active"


def test_after_the_rollback_the_federation_runs_jobs_on_the_old_key(rolled_back):
    for src in CLUSTERS:
        for dst in CLUSTERS:
            if src != dst:
                assert rolled_back.jobs[f"{src}->{dst}"]["NodeList"] == f"{dst}-compute-1"
    assert rolled_back.jobs["running"]["ExitCode"] == "0:0"  # ran across the switch and the switch back
    assert rolled_back.jobs["queued"]["JobState"] == "COMPLETED"


# ---------------------------------------------------------------- no key material anywhere


def test_no_key_material_in_history_logs_ssm_or_events(rotated, rolled_back, federation):
    cloud = federation.cloud
    haystack = [federation.logs.getvalue(), json.dumps(rotated.observed["events"]),
                json.dumps(rolled_back.observed["events"])]
    for arn in federation.executions:
        haystack += [json.dumps(e, default=str) for e in aws_harness.history(arn, cloud.region)]
    ssm = boto3.client("ssm", region_name=cloud.region)
    for command in cloud.commands:
        haystack.append(json.dumps(command["Parameters"]))
        invocation = ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=command["InstanceId"])
        haystack += [invocation["StandardOutputContent"], invocation["StandardErrorContent"]]
    text = "\n".join(haystack)
    assert "create-pending-munge-key.sh" in text and "rotation plan" in text  # the scan saw what it must
    assert len(federation.keys) == 6  # 3 own keys, the federation key, the rotated key, the discarded key
    for key in federation.keys:
        assert_absent(key, text)


# ---------------------------------------------------------------- evicting a member (registry revocation)


@pytest.fixture(scope="module")
def evicted(rolled_back, federation) -> dict[str, Any]:
    """The administrator revokes gamma in the registry: the unpairing runs nothing on gamma and starts a rotation
    of alpha and beta, which end on a key gamma never saw."""
    from lab.parallelcluster import parameter_change_event, revoke_cluster

    lab, cloud = federation.lab, federation.cloud
    gamma_before = fingerprints(lab)
    commands_before = len(cloud.commands)
    name = revoke_cluster(cloud.region, FEDERATION, cloud.clusters["gamma"].stack_id)
    started = aws_harness.route_event_to_all(cloud.deployment, parameter_change_event(name, "Delete", cloud.region))
    unpairing = aws_harness.wait_for_execution(started[aws_harness.UNPAIRING_STATE_MACHINE], cloud.region, timeout=300)
    output = json.loads(unpairing.get("output") or "{}")
    rotation = aws_harness.wait_for_execution(output["eviction"]["rotationExecution"], cloud.region, timeout=600)
    federation.executions += [unpairing["executionArn"], rotation["executionArn"]]
    gamma_instances = set(cloud.clusters["gamma"].instance_ids)
    return {
        "unpairing": unpairing, "rotation": rotation, "before": gamma_before, "after": fingerprints(lab),
        "commands_to_gamma": [c for c in cloud.commands[commands_before:] if c["InstanceId"] in gamma_instances],
        "jobs": jobs_in_every_direction(lab, ["alpha", "beta"]),
        "gamma_own": wait_job_completed(lab, "gamma-head", submit(lab, "gamma-head", "--wrap", "hostname"), 60),
    }


def test_a_revoked_member_is_left_alone_and_the_others_rotate_to_a_key_it_never_saw(evicted):
    assert evicted["unpairing"]["status"] == "SUCCEEDED", evicted["unpairing"].get("cause")
    assert evicted["rotation"]["status"] == "SUCCEEDED", evicted["rotation"].get("cause")
    assert json.loads(evicted["rotation"]["input"])["trigger"] == "eviction"
    assert evicted["commands_to_gamma"] == []  # nothing runs on a cluster that may be compromised
    before, after = evicted["before"], evicted["after"]
    gamma = {k: v for k, v in after.items() if k.startswith("gamma-")}
    others = {k: v for k, v in after.items() if not k.startswith("gamma-")}
    assert gamma == {k: v for k, v in before.items() if k.startswith("gamma-")}  # gamma untouched
    (new_key,) = set(others.values())
    assert new_key not in set(before.values())  # neither gamma's key nor any key gamma ever held
    assert evicted["jobs"]["alpha->beta"]["NodeList"] == "beta-compute-1"
    assert evicted["jobs"]["beta->alpha"]["NodeList"] == "alpha-compute-1"
    assert evicted["gamma_own"]["JobState"] == "COMPLETED"  # gamma still runs its own jobs on its own
