"""Node scripts reach fleets of any size: SSM's SendCommand takes at most 50 instance ids (AWS API reference;
moto accepts more, so the batches are asserted here)."""

from __future__ import annotations

from collections import Counter

import boto3
import pytest
from moto import mock_aws

from lab import cloud  # the SSM seam: moto runs each rendered document through an executor (notes/moto.md)
from slurm_multicluster import node_commands

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
