"""Which triggers start a pairing, and which end at once with no side effect (real ASL + handlers in moto)."""

from __future__ import annotations

import json

import boto3
import pytest

from lab import cloud
from slurm_multicluster import lease
from workflow.conftest import FEDERATION_TAGS, REGION


def _no_side_effects(moto_aws) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    ours = ec2.describe_security_group_rules(Filters=[{"Name": "tag-key", "Values": ["slurm-multicluster:federation"]}])
    assert ours["SecurityGroupRules"] == []
    assert boto3.client("secretsmanager", region_name=REGION).list_secrets()["SecretList"] == []
    assert moto_aws.commands == []


def test_untagged_cluster_creation_ends_without_side_effects(moto_aws):
    cluster = moto_aws.cluster("plain", "10.250.0.11", [])
    result = moto_aws.run_event(cloud.stack_status_event(cluster.stack_id, "CREATE_COMPLETE", REGION))
    assert result["status"] == "SUCCEEDED"
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    _no_side_effects(moto_aws)


def test_stack_that_is_not_a_parallelcluster_cluster_is_ignored(moto_aws):
    stack_id = boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="website", TemplateBody=json.dumps({"Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}}}),
        Tags=[{"Key": "slurm-multicluster:federation", "Value": "hpc"}])["StackId"]
    result = moto_aws.run_event(cloud.stack_status_event(stack_id, "CREATE_COMPLETE", REGION))
    assert result["status"] == "SUCCEEDED"
    assert json.loads(result.get("output", "{}")) is not None
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    _no_side_effects(moto_aws)


# CloudFormation names a nested stack <parent>-<logical id>-<suffix>; ParallelCluster's queue and login node stacks
# are CDK NestedStacks whose logical ids alone are long: the names run far past a cluster name's 60 characters.
NESTED_STACK_NAME = "beta-QueueGroup0NestedStackQueueGroup0NestedStackResource6B1D7D8F-1WQ4C2Q5XH7L9"


def nested_looking_stack(tags: dict[str, str]) -> str:
    """A stack named like a ParallelCluster nested stack, carrying the tags nested stacks inherit."""
    return boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName=NESTED_STACK_NAME, TemplateBody=json.dumps({"Resources": {}}),
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()])["StackId"]


@pytest.mark.parametrize("status", ["CREATE_COMPLETE", "UPDATE_COMPLETE"])
def test_events_of_stacks_with_long_generated_names_end_quietly_as_not_a_member(moto_aws, status):
    assert 60 < len(NESTED_STACK_NAME) <= 128
    stack_id = nested_looking_stack({"parallelcluster:version": "3.14.0", "parallelcluster:cluster-name": "beta",
                                     **FEDERATION_TAGS})
    result = moto_aws.run_event(cloud.stack_status_event(stack_id, status, REGION))
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    _no_side_effects(moto_aws)


@pytest.mark.parametrize("status", ["CREATE_IN_PROGRESS", "ROLLBACK_COMPLETE", "UPDATE_IN_PROGRESS", "DELETE_COMPLETE"])
def test_other_stack_statuses_do_not_start_a_pairing(moto_aws, status):
    cluster = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)
    assert moto_aws.run_event(cloud.stack_status_event(cluster.stack_id, status, REGION)) is None
    _no_side_effects(moto_aws)


@pytest.mark.parametrize("stack_name", ["x;reboot", "$(id)", "`id`", "beta gamma", "../../etc/passwd", "", "a" * 200])
def test_hostile_stack_names_are_rejected_before_anything_runs(moto_aws, stack_name):
    result = moto_aws.run_manual({"stackName": stack_name, "region": REGION})
    assert result["status"] == "FAILED"
    assert result["error"] == "InvalidInput"
    assert cloud.state_names(result["executionArn"], REGION) == ["NormalizeTrigger"]
    _no_side_effects(moto_aws)


@pytest.mark.parametrize("request_", [
    {"stackName": "beta", "region": "us-east-1; rm -rf /"},
    {"stackName": "beta", "region": REGION, "dryRun": "$(id)"},
    {"stackName": "beta", "region": REGION, "extra": "unexpected"},
    {"region": REGION},
])
def test_malformed_manual_requests_are_rejected(moto_aws, request_):
    result = moto_aws.run_manual(request_)
    assert result["status"] == "FAILED"
    assert result["error"] == "InvalidInput"
    _no_side_effects(moto_aws)


def test_hostile_federation_tag_is_rejected_with_no_side_effect(moto_aws):
    cluster = moto_aws.cluster("beta", "10.250.0.21", [], {"slurm-multicluster:federation": "hpc;reboot"})
    result = moto_aws.run_event(cloud.stack_status_event(cluster.stack_id, "CREATE_COMPLETE", REGION))
    assert result["status"] == "FAILED"
    assert result["error"] == "InvalidInput"
    assert "slurm-multicluster:federation" in result["cause"]
    _no_side_effects(moto_aws)


def test_head_node_without_ssm_fails_saying_which_policy_to_add(moto_aws):
    moto_aws.cluster("alpha", "10.250.0.11", [], {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"})
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)
    result = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))
    assert result["status"] == "FAILED"
    assert "NodeUnreachable" in result["error"] or "NodeUnreachable" in result["cause"]
    assert "AmazonSSMManagedInstanceCore" in result["cause"]
    _no_side_effects(moto_aws)


def test_the_same_event_delivered_twice_is_handled_once(moto_aws):
    moto_aws.cluster("alpha", "10.250.0.11", [], {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"})
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)
    event = cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION)
    first = moto_aws.run_event(event)
    second = moto_aws.run_event(event)
    assert "DiscoverFederation" in cloud.state_names(first["executionArn"], REGION)
    assert cloud.state_names(second["executionArn"], REGION)[-1] == "SkipDuplicateDelivery"
    assert second["status"] == "SUCCEEDED"


def test_a_failed_pairing_gives_the_federation_back(moto_aws):
    moto_aws.cluster("alpha", "10.250.0.11", [], {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"})
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)
    result = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))
    assert result["status"] == "FAILED" and result["error"] == "ReadSlurmSettingsFailed"
    states = cloud.state_names(result["executionArn"], REGION)
    assert states.index("AcquireFederationLease") < states.index("ReleaseFederationLease")
    table = boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"]
    leases = [n for n in table if "FederationLease" in n]
    assert leases and lease.holder_of(boto3.client("dynamodb", region_name=REGION), leases[0], "hpc") is None
