"""The sweep as the backstop in the other direction (real sweep, unpairing and rotation ASL + handlers in moto): a
cluster that still holds this deployment's rules or secret read access but is no longer an admitted, tagged member
(revoked in the registry, its tag removed, its stack deleted, the event that should have unpaired it missed) is
reported with dryRun and unpaired without; a secret reader no member's head node role accounts for is revoked."""

from __future__ import annotations

import json

import boto3
import pytest

from lab import cloud
from lab.parallelcluster import revoke_cluster
from slurm_multicluster import munge_secret
from workflow.conftest import REGION
from workflow.test_unpairing_workflow import SECRET, _ours_touching, _secret_readers, federation  # noqa: F401
from workflow.test_unresolvable_members import _head_role

STRANGER = "arn:aws:iam::123456789012:role/parallelcluster/long-gone-head"


def run_sweep(moto_aws, request: dict) -> dict:
    result = cloud.wait_for_execution(cloud.start_execution(moto_aws.deployment, request, cloud.SWEEP_STATE_MACHINE),
                                      REGION, timeout=300)
    assert result["status"] == "SUCCEEDED", result.get("cause")
    return json.loads(result["output"])


def _unpairings(moto_aws) -> list[dict]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = moto_aws.deployment.state_machines[cloud.UNPAIRING_STATE_MACHINE]
    return sfn.list_executions(stateMachineArn=arn)["executions"]


def _group(cluster) -> str:
    instance = boto3.client("ec2", region_name=REGION).describe_instances(
        InstanceIds=[cluster.head_instance_id])["Reservations"][0]["Instances"][0]
    return instance["SecurityGroups"][0]["GroupId"]


def _departed(report: dict) -> dict[str, str]:
    return {line["stackId"]: line["reason"] for line in report["departed"]}


def test_a_revoked_member_whose_event_was_missed_is_reported_by_a_dry_run_and_unpaired_by_a_sweep(moto_aws, federation):
    beta = federation["beta"]
    revoke_cluster(REGION, "hpc", beta.stack_id)  # the registry's change event never reached the unpairing
    readers = _secret_readers()

    dry = run_sweep(moto_aws, {"dryRun": True})

    assert _departed(dry) == {beta.stack_id: "the registry no longer admits it to hpc"}
    assert dry["unpaired"] == [] and _unpairings(moto_aws) == []
    assert _ours_touching(_group(beta)) and _secret_readers() == readers  # a dry run changes nothing

    swept = run_sweep(moto_aws, {"dryRun": False})

    assert swept["unpaired"] == [beta.stack_id]
    assert _ours_touching(_group(beta)) == []
    assert _head_role(beta) not in _secret_readers()
    assert _head_role(federation["gamma"]) in _secret_readers()
    (unpairing,) = _unpairings(moto_aws)
    states = cloud.state_names(unpairing["executionArn"], REGION)
    assert "RotateRemainingMembers" in states  # revoked: nothing runs on it, the others rotate to a key it never saw
    assert beta.head_instance_id not in {c["InstanceId"] for c in moto_aws.commands}
    assert "beta" not in run_sweep(moto_aws, {"dryRun": True})["checked"]


@pytest.mark.parametrize("departure", ["tag removed", "stack deleted"])
def test_a_member_whose_tag_or_stack_went_without_an_unpairing_is_unpaired_by_the_sweep(moto_aws, federation, departure):
    beta = federation["beta"]
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    group, role = _group(beta), _head_role(beta)
    if departure == "tag removed":
        stack = cloudformation.describe_stacks(StackName=beta.stack_id)["Stacks"][0]
        cloudformation.update_stack(StackName=beta.stack_id, UsePreviousTemplate=True, Tags=[
            t for t in stack["Tags"] if t["Key"] != "slurm-multicluster:federation"])
        why = "its slurm-multicluster:federation tag no longer names hpc"
    else:
        cloudformation.delete_stack(StackName=beta.stack_id)
        boto3.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[beta.head_instance_id])
        why = "its stack was deleted"

    dry = run_sweep(moto_aws, {"dryRun": True})
    assert _departed(dry) == {beta.stack_id: why}

    swept = run_sweep(moto_aws, {"dryRun": False})
    assert _ours_touching(group) == [] and role not in _secret_readers()
    if departure == "stack deleted":
        assert swept["unpaired"] == [beta.stack_id]
    else:  # it keeps running: the unpairing gives it its own slurmdbd back, which needs SSM (none reaches a node here)
        failed = {line["cluster"]: line["error"] for line in swept["failed"]}
        assert failed["beta"].startswith("DetachDepartingClusterFailed")
    assert _departed(run_sweep(moto_aws, {"dryRun": True})) == {}  # nothing of ours names it any more


def test_a_secret_reader_no_member_accounts_for_is_reported_then_revoked(moto_aws, federation):
    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.describe_secret(SecretId=SECRET)["ARN"]
    policy = json.loads(secrets.get_resource_policy(SecretId=arn)["ResourcePolicy"])
    members = _secret_readers()
    policy["Statement"][0]["Principal"]["AWS"] = [*members, STRANGER]  # left by an unpairing that failed half-way
    secrets.put_resource_policy(SecretId=arn, ResourcePolicy=json.dumps(policy))

    dry = run_sweep(moto_aws, {"dryRun": True})
    assert [(r["federation"], r["roles"], r["revoked"]) for r in dry["departedReaders"]] == [("hpc", [STRANGER], False)]
    assert STRANGER in _secret_readers()

    swept = run_sweep(moto_aws, {"dryRun": False})
    assert [(r["roles"], r["revoked"]) for r in swept["departedReaders"]] == [([STRANGER], True)]
    assert _secret_readers() == members
    assert munge_secret.readers(secrets.get_resource_policy(SecretId=arn)["ResourcePolicy"],
                                "AccountingHeadNodeWritesMungeKey") == [_head_role(federation["alpha"])]
    assert _departed(swept) == {} and swept["unpaired"] == []
