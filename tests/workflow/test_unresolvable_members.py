"""Unresolvable stacks never halt the others (real ASL + handlers in moto): an admitted peer whose head node SSM does
not manage, or two admitted stacks claiming one Slurm ClusterName, are left out of the pairing, the rotation and the
unpairing of the rest, named in the step's output, a "Slurm Cluster Skipped" event and the MembersSkipped metric;
the stack a workflow is about still fails loudly."""

from __future__ import annotations

import json

import boto3
import pytest

from lab import cloud
from workflow.conftest import FEDERATION_TAGS, REGION

ACCOUNTING_TAGS = {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"}


@pytest.fixture
def skip_events(moto_aws):
    queue = cloud.events_queue(REGION, "skip-events")
    return lambda: [e for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Cluster Skipped"]


def _step_output(result: dict, state: str) -> dict | list:
    exited = [e for e in cloud.history(result["executionArn"], REGION)
              if e.get("stateExitedEventDetails", {}).get("name") == state]
    return json.loads(exited[0]["stateExitedEventDetails"]["output"])


def _skipped_metric(captured: str) -> list[dict]:
    blobs = [json.loads(line) for line in captured.splitlines() if line.startswith("{") and '"_aws"' in line]
    return [b for b in blobs if "MembersSkipped" in b]


def test_a_peer_whose_head_node_ssm_does_not_manage_is_skipped_and_announced(moto_aws, skip_events, capsys):
    alpha = moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    offline = moto_aws.cluster("offline", "10.250.0.31", [], FEDERATION_TAGS)
    moto_aws.ssm_unregistered.add(offline.head_instance_id)
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)

    result = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))

    found = _step_output(result, "DiscoverFederation")["discovery"]
    assert sorted(m["clusterName"] for m in found["members"]) == ["alpha", "beta"]
    assert [(s["clusterName"], s["stackId"]) for s in found["skipped"]] == [("offline", offline.stack_id)]
    assert "not managed by SSM" in found["skipped"][0]["reason"]
    assert "AmazonSSMManagedInstanceCore" in found["skipped"][0]["reason"]
    assert "ReadSlurmSettings" in cloud.state_names(result["executionArn"], REGION)  # the pairing went on
    assert offline.head_instance_id not in {c["InstanceId"] for c in moto_aws.commands}
    events = skip_events()
    assert [(e["detail"]["stackId"], e["detail"]["workflow"], e["source"]) for e in events] == [
        (offline.stack_id, "pairing", "slurm-multicluster")]
    assert "not managed by SSM" in events[0]["detail"]["reason"]
    assert [m["MembersSkipped"] for m in _skipped_metric(capsys.readouterr().out)] == [[1.0]]  # EMF: a list
    assert alpha.stack_id not in json.dumps(events)


def test_the_cluster_a_pairing_is_about_fails_loudly_when_ssm_does_not_manage_its_head_node(moto_aws, skip_events):
    moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    offline = moto_aws.cluster("offline", "10.250.0.31", [], FEDERATION_TAGS)
    moto_aws.ssm_unregistered.add(offline.head_instance_id)

    result = moto_aws.run_event(cloud.stack_status_event(offline.stack_id, "CREATE_COMPLETE", REGION))

    assert result["status"] == "FAILED"
    assert result["error"] == "NodeUnreachable"
    assert offline.head_instance_id in result["cause"] and "AmazonSSMManagedInstanceCore" in result["cause"]
    assert moto_aws.commands == []
    assert skip_events() == []  # the cluster asked about is not skipped: it failed


def test_two_admitted_stacks_claiming_one_cluster_name_are_both_named_and_neither_joins(moto_aws, skip_events):
    moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    first = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)
    second = moto_aws.cluster("BETA", "10.250.0.22", [], FEDERATION_TAGS)  # slurmdbd: the same ClusterName "beta"
    gamma = moto_aws.cluster("gamma", "10.250.0.41", [], FEDERATION_TAGS)

    others = moto_aws.run_event(cloud.stack_status_event(gamma.stack_id, "CREATE_COMPLETE", REGION))
    refused = [moto_aws.run_event(cloud.stack_status_event(s.stack_id, "CREATE_COMPLETE", REGION))
               for s in (first, second)]

    found = _step_output(others, "DiscoverFederation")["discovery"]
    assert sorted(m["clusterName"] for m in found["members"]) == ["alpha", "gamma"]
    assert sorted(s["stackId"] for s in found["skipped"]) == sorted([first.stack_id, second.stack_id])
    for line in found["skipped"]:
        assert "ClusterName beta is claimed by 2 admitted stacks" in line["reason"]
        assert first.stack_id in line["reason"] and second.stack_id in line["reason"]
    for result in refused:  # each one's own pairing fails loudly, naming both, before anything changes
        assert result["status"] == "FAILED" and result["error"] == "PrerequisiteFailed"
        assert first.stack_id in result["cause"] and second.stack_id in result["cause"]
        assert cloud.state_names(result["executionArn"], REGION)[-1] != "ReadSlurmSettings"
    assert {first.head_instance_id, second.head_instance_id}.isdisjoint(c["InstanceId"] for c in moto_aws.commands)
    assert sorted(e["detail"]["stackId"] for e in skip_events()) == sorted([first.stack_id, second.stack_id])


def test_the_rotation_and_the_unpairing_go_on_without_a_skipped_member_and_announce_it(moto_aws, skip_events):
    moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    offline = moto_aws.cluster("offline", "10.250.0.31", [], FEDERATION_TAGS)
    moto_aws.ssm_unregistered.add(offline.head_instance_id)
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)

    rotation = cloud.wait_for_execution(cloud.start_execution(
        moto_aws.deployment, {"federation": "hpc", "region": REGION}, cloud.ROTATION_STATE_MACHINE), REGION, timeout=120)
    unpairing = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))

    rotated = _step_output(rotation, "DiscoverFederationMembers")["discovery"]
    assert sorted(m["clusterName"] for m in rotated["members"]) == ["alpha", "beta"]
    assert [s["stackId"] for s in rotated["skipped"]] == [offline.stack_id]
    assert "ReadSlurmSettings" in cloud.state_names(rotation["executionArn"], REGION)
    remaining = _step_output(unpairing, "DiscoverRemainingMembers")["remaining"]
    assert [m["clusterName"] for m in remaining] == ["alpha"]
    assert "UpdateSecretAccess" in cloud.state_names(unpairing["executionArn"], REGION)
    assert sorted((e["detail"]["workflow"], e["detail"]["stackId"]) for e in skip_events()) == [
        ("rotation", offline.stack_id), ("unpairing", offline.stack_id)]


# ---------------------------------------------------------------- secret access: current readers minus the departing role
from workflow.test_unpairing_workflow import _secret_readers, federation, route  # noqa: E402,F401 (fixtures)


def _head_role(cluster) -> str:
    instance = boto3.client("ec2", region_name=REGION).describe_instances(
        InstanceIds=[cluster.head_instance_id])["Reservations"][0]["Instances"][0]
    profile = instance["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
    return boto3.client("iam", region_name=REGION).get_instance_profile(
        InstanceProfileName=profile)["InstanceProfile"]["Roles"][0]["Arn"]


def test_a_departing_cluster_loses_read_access_first_and_a_skipped_member_keeps_its_own(moto_aws, federation, route):
    beta, gamma = federation["beta"], federation["gamma"]
    moto_aws.ssm_unregistered.add(gamma.head_instance_id)  # gamma does not resolve: it stays a member all the same
    before = _secret_readers()

    unpairing = route(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))["UnpairingStateMachine"]

    assert sorted(set(before) - set(_secret_readers())) == [_head_role(beta)]
    assert _head_role(gamma) in _secret_readers()
    states = cloud.state_names(unpairing["executionArn"], REGION)
    assert states.index("UpdateSecretAccess") == states.index("AcquireFederationLease") + 1  # nothing can fail before it
    assert states.index("UpdateSecretAccess") < states.index("DiscoverRemainingMembers")


def test_a_departed_cluster_whose_head_node_is_gone_loses_read_access_by_what_the_members_account_for(
        moto_aws, federation, route):
    beta, gamma = federation["beta"], federation["gamma"]
    role = _head_role(beta)
    boto3.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[beta.head_instance_id])
    moto_aws.ssm_unregistered.add(gamma.head_instance_id)
    before = _secret_readers()

    route(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))

    assert sorted(set(before) - set(_secret_readers())) == [role]
    assert _head_role(gamma) in _secret_readers()
