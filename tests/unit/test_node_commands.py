"""Node scripts reach fleets of any size: SSM's SendCommand takes at most 50 instance ids (AWS API reference;
moto accepts more, so the batches are asserted here)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import boto3
import pytest
from moto import mock_aws

from lab import cloud  # the SSM seam: moto runs each rendered document through an executor (notes/moto.md)
from slurm_multicluster import node_commands
from slurm_multicluster.errors import NodeCommandFailed, NodeUnreachable

REGION = "us-east-1"


@pytest.fixture
def compute_fleet():
    """120 running compute nodes, as a busy ParallelCluster queue has; each answers as a node script does."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=120, MaxCount=120)["Instances"]]

        def node(command):
            return 0, f'{{"ok": true, "changed": false, "node": "{command.instance_id}"}}\n', ""

        cloud.deploy_node_documents(REGION, {})
        with cloud.ssm_runs_on(node, routable=lambda instance_id: True) as sent:
            yield boto3.client("ssm", region_name=REGION), ids, sent


def test_a_fleet_of_120_is_sent_in_batches_of_at_most_50_and_every_node_answers(compute_fleet):
    ssm, ids, sent = compute_fleet

    results = node_commands.run_script(ssm, ids, "discover-slurm.sh", {}, timeout_seconds=60, comment="test")

    assert sorted(results) == sorted(ids)  # one result per node, none lost between batches
    assert all(r.ok and r.result["node"] == i for i, r in results.items())
    per_command = Counter(s["CommandId"] for s in sent)
    assert sorted(per_command.values()) == [20, 50, 50]
    assert sorted(s["InstanceId"] for s in sent) == sorted(ids)


def test_a_fleet_of_50_is_one_command(compute_fleet):
    ssm, ids, sent = compute_fleet

    node_commands.run_script(ssm, ids[:50], "discover-slurm.sh", {}, timeout_seconds=60, comment="test")

    assert list(Counter(s["CommandId"] for s in sent).values()) == [50]


class _ShortLambdaContext:
    """A Lambda context with ``seconds`` left, as a step sees it near its Timeout."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@pytest.fixture
def hung_node():
    """One node whose script never finishes (until the test lets it go)."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        release = threading.Event()

        def node(command):
            release.wait(60)
            return 0, '{"ok": true}\n', ""

        cloud.deploy_node_documents(REGION, {})
        with cloud.ssm_runs_on(node, routable=lambda instance_id: True) as sent:
            yield boto3.client("ssm", region_name=REGION), instance, sent
        release.set()


def test_collect_gives_up_before_the_lambda_times_out_and_cancels_the_command(hung_node):
    ssm, instance, sent = hung_node
    context = _ShortLambdaContext(seconds=2.5)

    started = time.monotonic()
    with pytest.raises(NodeCommandFailed) as failure:
        with node_commands.invocation(context, margin_seconds=1):  # as lambda_step.pairing_step does
            node_commands.run_script(ssm, [instance], "discover-slurm.sh", {}, timeout_seconds=600, comment="test")
    gave_up_after = time.monotonic() - started

    assert gave_up_after < 2.5  # before the context ran out, not after the command's 600 s
    assert context.get_remaining_time_in_millis() > 0
    assert "did not finish within" in str(failure.value)
    assert f"cancelled the command on {instance}" in str(failure.value)
    (invocation,) = sent
    assert invocation.get("Cancelled") is True
    assert ssm.get_command_invocation(CommandId=invocation["CommandId"], InstanceId=instance)["Status"] == "Cancelled"


def test_a_failing_step_cancels_the_commands_it_still_has_in_flight(hung_node):
    ssm, instance, sent = hung_node

    with pytest.raises(RuntimeError):
        with node_commands.invocation(_ShortLambdaContext(seconds=600)):
            node_commands.send_script(ssm, [instance], "discover-slurm.sh", {}, timeout_seconds=60, comment="test")
            raise RuntimeError("another check of the step failed")

    (invocation,) = sent
    assert ssm.get_command_invocation(CommandId=invocation["CommandId"], InstanceId=instance)["Status"] == "Cancelled"


def test_without_a_lambda_context_collect_waits_for_the_command_timeout_and_cancels(hung_node, monkeypatch):
    ssm, instance, sent = hung_node
    monkeypatch.setattr(node_commands, "SSM_DELIVERY_SECONDS", 0)

    with pytest.raises(NodeCommandFailed, match=r"did not finish within 1 s \(the script's 1 s"):
        node_commands.run_script(ssm, [instance], "discover-slurm.sh", {}, timeout_seconds=1, comment="test")

    (invocation,) = sent
    assert ssm.get_command_invocation(CommandId=invocation["CommandId"], InstanceId=instance)["Status"] == "Cancelled"


# ---------------------------------------------------------------- fleets: nodes shut down before or while a script runs


def test_a_fleet_node_terminated_before_the_command_is_left_out_and_the_others_run(compute_fleet):
    ssm, ids, sent = compute_fleet
    ec2 = boto3.client("ec2", region_name=REGION)
    ec2.terminate_instances(InstanceIds=[ids[7], ids[60]])  # one in each of the first two batches

    results = node_commands.run_on_fleet(ssm, ec2, ids, "discover-slurm.sh", {}, timeout_seconds=60, comment="test")

    assert sorted(i for i, r in results.items() if r.gone) == sorted([ids[7], ids[60]])
    assert all(r.ok for i, r in results.items() if i not in (ids[7], ids[60]))
    commands = ssm.list_commands()["Commands"]
    assert sorted(i for c in commands for i in c["InstanceIds"]) == sorted(set(ids) - {ids[7], ids[60]})
    assert all(len(c["InstanceIds"]) <= 50 for c in commands)


def test_outside_a_fleet_a_terminated_node_is_unreachable_and_nothing_stays_in_flight(compute_fleet):
    ssm, ids, sent = compute_fleet
    boto3.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[ids[60]])

    with pytest.raises(NodeUnreachable, match=f"SSM cannot reach .*{ids[60]}"):
        with node_commands.invocation(_ShortLambdaContext(seconds=600)):
            node_commands.run_script(ssm, ids, "discover-slurm.sh", {}, timeout_seconds=60, comment="test")

    # the first batch went out before the second was refused; the third was never sent
    assert [len(c["InstanceIds"]) for c in ssm.list_commands()["Commands"]] == [50]


def test_a_fleet_node_terminated_while_its_script_runs_is_gone_without_waiting_for_the_timeout(hung_node, monkeypatch):
    ssm, instance, sent = hung_node
    monkeypatch.setattr(node_commands, "GONE_CHECK_SECONDS", 0.2)
    ec2 = boto3.client("ec2", region_name=REGION)
    threading.Timer(0.5, lambda: ec2.terminate_instances(InstanceIds=[instance])).start()

    results = node_commands.run_on_fleet(ssm, ec2, [instance], "discover-slurm.sh", {}, timeout_seconds=600,
                                         comment="test")

    assert results[instance].gone and results[instance].result["gone"] is True


def test_a_head_node_terminated_while_its_script_runs_still_fails(hung_node, monkeypatch):
    ssm, instance, sent = hung_node
    monkeypatch.setattr(node_commands, "SSM_DELIVERY_SECONDS", 0)
    boto3.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[instance])

    with pytest.raises((NodeCommandFailed, NodeUnreachable)):
        node_commands.run_script_checked(ssm, [instance], "discover-slurm.sh", {}, timeout_seconds=1, comment="test")
