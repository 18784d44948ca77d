"""A pairing step whose Lambda would time out with a node command still running (real daemons)."""

from __future__ import annotations

import re

import boto3
import pytest

from lab import ClusterSpec
from lab.cloud import history as cloud_history
from lab.bridge import lab_cloud
from lab_helpers import sha256, submit, wait_job_completed, wait_until
from pairing_helpers import (
    ACCOUNTING_CONF, ALPHA_TAGS, BETA_TAGS, KEY, SHARED_KEY, events_queue, fresh_lab, our_rules, published, run_logged,
)

pytestmark = pytest.mark.lab

SYNC_LAMBDA_TIMEOUT = 40  # SyncMungeKeyFunction's Timeout here (the template's is 120 s); it gives up 15 s before
HOLD = "/run/lab/hold-node-lock"  # while it exists, install-munge-key.sh cannot take beta-compute-1's node lock
WAITING = "/run/lab/node-lock-waiter"  # "<flock pid> <install-munge-key.sh pid>", once the script waits

# Fault injection: on beta-compute-1 only (the node's own /usr/local/bin, ahead of /usr/bin on PATH), the flock of
# install-munge-key.sh's lock_node waits as if another node script held the lock until the test removes HOLD, then
# gives up as `flock -w` does (exit 1: the script fails before it has changed anything). Every other flock is real.
BLOCKED_FLOCK = f"""#!/bin/sh
case "$(tr '\\0' ' ' </proc/$PPID/cmdline)" in
*install-munge-key.sh*)
    echo $$ $PPID >{WAITING}
    while [ -e {HOLD} ]; do sleep 0.2; done
    exit 1 ;;
esac
exec /usr/bin/flock "$@"
"""


@pytest.fixture
def two_clusters(lab_host):
    # 24.11 explicitly: its nodes run in an overlay root, so /usr/local/bin is beta-compute-1's own
    with fresh_lab("pairtimeout", "10.250.81.0/24", [ClusterSpec("alpha", accounting=True, slurm="24.11"),
                                                     ClusterSpec("beta", slurm="24.11")]) as lab:
        yield lab


def _alive(lab, node: str, pid: str) -> bool:
    return lab.exec(node, ["sh", "-c", f"kill -0 {pid}"]).returncode == 0


def test_a_sync_munge_key_lambda_that_would_time_out_with_its_command_running_is_rolled_back(two_clusters):
    lab = two_clusters
    lab.exec("beta-compute-1", ["sh", "-c", f"touch {HOLD} && cat > /usr/local/bin/flock && chmod 755 /usr/local/bin/flock"],
             input=BLOCKED_FLOCK, check=True)
    assert lab.exec("beta-head", ["test", "-e", "/usr/local/bin/flock"]).returncode != 0  # that node's alone
    keys = {n: sha256(lab, n, KEY) for n in ("beta-head", "beta-compute-1")}
    shared = sha256(lab, "beta-head", SHARED_KEY)
    conf = lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout
    try:
        with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
            boto3.client("lambda", region_name=cloud.region).update_function_configuration(
                FunctionName=cloud.deployment.functions["SyncMungeKeyFunction"], Timeout=SYNC_LAMBDA_TIMEOUT)
            queue = events_queue()
            compute = next(i for i, n in cloud.node_of_instance.items() if n == "beta-compute-1")
            # A Lambda that waited for its command instead of giving up would wait as long as HOLD exists: the
            # execution would not end within this timeout (the test removes HOLD only afterwards).
            result, _ = run_logged(cloud, cloud.event_for("beta"), timeout=180)

            # the execution is over, and the cancel killed the blocked install on beta-compute-1 (as the SSM agent
            # kills a cancelled command): it can never change the node after the compensation
            waiting = lab.exec("beta-compute-1", ["cat", WAITING], check=True).stdout.split()
            wait_until(lambda: not any(_alive(lab, "beta-compute-1", pid) for pid in waiting), 30,
                       "the cancelled install-munge-key.sh killed on beta-compute-1")
            assert lab.exec("beta-compute-1", ["test", "-e", HOLD]).returncode == 0  # killed, not released
            assert result["status"] == "FAILED"
            assert result["error"] == "SyncMungeKeyFailed"
            # "<error>: <the Lambda's error message>", as WordTheFailure words it
            error, message = result["cause"].split(": ", 1)
            assert error == "NodeCommandFailed"
            assert re.fullmatch(rf"install-munge-key\.sh did not finish within (\d+) s \(before the Lambda's own "
                                rf"timeout\) on {compute}; cancelled the command on {compute}", message), message
            # ... and it gave up before its own Timeout, not at it
            events = cloud_history(result["executionArn"], cloud.region)
            entered = next(i for i, e in enumerate(events)
                           if e.get("stateEnteredEventDetails", {}).get("name") == "SyncMungeKey")
            failed = next(e for e in events[entered:] if e["type"].endswith("Failed"))
            assert (failed["timestamp"] - events[entered]["timestamp"]).total_seconds() < SYNC_LAMBDA_TIMEOUT, failed
            installs = [c for c in cloud.commands if c["DocumentName"].endswith("-InstallMungeKey")]
            assert [(c["InstanceId"], c.get("Cancelled", False)) for c in installs] == [
                (cloud.clusters["beta"].head_instance_id, False), (compute, True)]
            ssm = boto3.client("ssm", region_name=cloud.region)
            # the head node's install had finished (federation key on beta-head): RestoreNodeBackups put it back
            head = cloud.clusters["beta"].head_instance_id
            assert ssm.get_command_invocation(CommandId=installs[0]["CommandId"], InstanceId=head)["Status"] == "Success"
            assert head in {c["InstanceId"] for c in cloud.commands if c["DocumentName"].endswith("-RestoreBackup")}
            assert ssm.get_command_invocation(CommandId=installs[1]["CommandId"], InstanceId=compute)[
                "Status"] == "Cancelled"
            assert our_rules() == []
            assert [e["detail-type"] for e in published(queue)] == ["Slurm Cluster Pairing Failed"]
    finally:
        lab.exec("beta-compute-1", ["rm", "-f", HOLD], check=True)
    lab.exec("beta-compute-1", ["rm", "-f", "/usr/local/bin/flock", WAITING], check=True)
    # compensated: beta's keys and config as before, and beta runs its own jobs as before
    assert {n: sha256(lab, n, KEY) for n in keys} == keys
    assert sha256(lab, "beta-head", SHARED_KEY) == shared
    assert lab.exec("beta-head", ["cat", ACCOUNTING_CONF]).stdout == conf
    lab.wait_idle(["beta-compute-1"], timeout=60)
    job = wait_job_completed(lab, "beta-head", submit(lab, "beta-head", "--wrap", "hostname"), timeout=60)
    assert job["NodeList"] == "beta-compute-1"
