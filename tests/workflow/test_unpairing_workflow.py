"""Unpairing in moto (real ASL + handlers): stack deletion, federation tag removed or added, the accounting cluster.

The federation is set up with the product's own code (ingress.connect, munge_secret.set_access), as a
pairing leaves it; SSM reaches no node here, so these runs prove the AWS side: no rule of ours is left that would
block CloudFormation's deletion of the departing cluster's security group.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from lab import cloud
from lab.parallelcluster import add_admission_rule, parameter_change_event, revoke_cluster
from slurm_multicluster import discovery, ingress, munge_secret, registry
from slurm_multicluster.aws import client
from slurm_multicluster.models import SlurmSettings
from slurm_multicluster.settings import Settings
from workflow.conftest import FEDERATION_TAGS, REGION
from workflow.test_pairing_secret import deployment_key_arn

FEDERATION_KEY = "slurm-multicluster:federation"
ACCOUNTING_TAGS = {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"}
SECRET = "slurm-multicluster/default/hpc/munge-key"


@pytest.fixture
def federation(moto_aws):
    """alpha (accounting), beta and gamma paired as a pairing leaves them: rules between all, secret policy."""
    clusters = {
        "alpha": moto_aws.cluster("alpha", "10.250.0.11", ["10.250.0.12"], ACCOUNTING_TAGS),
        "beta": moto_aws.cluster("beta", "10.250.0.21", ["10.250.0.22"], FEDERATION_TAGS),
        "gamma": moto_aws.cluster("gamma", "10.250.0.31", [], FEDERATION_TAGS),
    }
    config = Settings(deployment_region=REGION)
    declared = registry.declared(client, config, "hpc")
    members = []
    for name in clusters:
        stack = boto3.client("cloudformation", region_name=REGION).describe_stacks(StackName=name)["Stacks"][0]
        member = discovery.member(client, stack, REGION, declared, config)
        members.append(member.model_copy(update={"slurm": SlurmSettings(
            cluster_name=name, slurmctld_port="6820-6829", dbd_port=6819 if member.is_accounting else None,
            slurm_version="22.05.8", munge_key_sha256="0" * 64)}))
    ec2_for = lambda region: client("ec2", region)  # noqa: E731
    for i, member in enumerate(members):  # paired one after the other
        ingress.connect(ec2_for, lambda r: client("service-quotas", r), members[:i + 1], f"pair-{member.cluster_name}",
                        "default")
    secrets = client("secretsmanager", REGION)
    ours = config.model_copy(update={"munge_key_kms_key_arn": deployment_key_arn(moto_aws.deployment)})
    arn, _ = munge_secret.ensure_secret(secrets, SECRET, "hpc", ours)
    munge_secret.set_access(secrets, arn, members)
    return clusters


def _rules() -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=REGION)
    return [r for page in ec2.get_paginator("describe_security_group_rules").paginate() for r in page["SecurityGroupRules"]]


def _ours_touching(group_id: str) -> list[dict[str, Any]]:
    return [r for r in _rules() if any(t["Key"] == FEDERATION_KEY for t in r.get("Tags", []))
            and group_id in (r["GroupId"], r.get("ReferencedGroupInfo", {}).get("GroupId"))]


def _secret_readers() -> list[str]:
    policy = boto3.client("secretsmanager", region_name=REGION).get_resource_policy(SecretId=SECRET).get("ResourcePolicy")
    statements = json.loads(policy)["Statement"] if policy else []
    return sorted(arn for s in statements if s["Sid"] == "MemberHeadNodesReadMungeKey" for arn in s["Principal"]["AWS"])


@pytest.fixture
def route(moto_aws):
    def run_all(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
        started = cloud.route_event_to_all(moto_aws.deployment, event)
        return {logical: cloud.wait_for_execution(arn, REGION, timeout=120) for logical, arn in started.items()}
    return run_all


def test_deleting_a_member_revokes_every_rule_touching_its_group_so_the_group_can_be_deleted(moto_aws, federation, route):
    beta, alpha, gamma = federation["beta"], federation["alpha"], federation["gamma"]
    assert _ours_touching(beta.security_group_id), "the fixture must pair beta first"
    kept_between_others = [r["SecurityGroupRuleId"] for r in _ours_touching(alpha.security_group_id)
                           if beta.security_group_id not in (r["GroupId"], r.get("ReferencedGroupInfo", {}).get("GroupId"))]
    queue = cloud.events_queue(REGION)

    outcomes = route(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))

    assert list(outcomes) == [cloud.UNPAIRING_STATE_MACHINE]
    result = outcomes[cloud.UNPAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert _ours_touching(beta.security_group_id) == []
    # CloudFormation's deletion of the group must not meet DependencyViolation: no rule anywhere references it.
    # (moto does not enforce DependencyViolation on delete_security_group, so this is asserted on the rules.)
    assert [r for r in _rules() if r.get("ReferencedGroupInfo", {}).get("GroupId") == beta.security_group_id] == []
    # alpha <-> gamma untouched; the secret is readable by alpha and gamma only.
    remaining = {r["SecurityGroupRuleId"] for r in _rules()}
    assert set(kept_between_others) <= remaining and kept_between_others
    assert _secret_readers() == sorted([alpha.head_role_arn, gamma.head_role_arn])
    output = json.loads(result["output"])
    assert output["accounting"]["action"] == "kept"
    assert moto_aws.commands == []  # keeping the history touches no node
    events = [e for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Cluster Unpaired"]
    assert [(e["detail"]["cluster"], e["detail"]["federation"], e["detail"]["trigger"]) for e in events] == [
        ("beta", "hpc", "DELETE_IN_PROGRESS")]


def test_unpairing_twice_changes_nothing_the_second_time(moto_aws, federation, route):
    beta = federation["beta"]
    first = route(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))[cloud.UNPAIRING_STATE_MACHINE]
    rules_after_first = sorted(r["SecurityGroupRuleId"] for r in _rules())
    # EventBridge may deliver the status change again under a new event id (or CloudFormation retries the delete).
    second = route(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))[cloud.UNPAIRING_STATE_MACHINE]
    assert (first["status"], second["status"]) == ("SUCCEEDED", "SUCCEEDED"), second.get("cause")
    assert json.loads(first["output"])["revokedBeforeLease"]
    assert json.loads(second["output"])["revokedBeforeLease"] == []
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_after_first


def test_removing_the_federation_tag_opts_out_and_adding_it_opts_in(moto_aws, federation, route):
    gamma = federation["gamma"]
    boto3.client("cloudformation", region_name=REGION).update_stack(
        StackName="gamma", UsePreviousTemplate=True,
        Tags=[{"Key": "parallelcluster:version", "Value": "3.11.1"}, {"Key": "parallelcluster:cluster-name", "Value": "gamma"}])
    removed = route(cloud.tag_change_event(gamma.stack_id, REGION, [FEDERATION_KEY], {"parallelcluster:version": "3.11.1"}))

    assert set(removed) == {cloud.PAIRING_STATE_MACHINE, cloud.UNPAIRING_STATE_MACHINE}
    assert cloud.state_names(removed[cloud.PAIRING_STATE_MACHINE]["executionArn"], REGION)[-1] == "IgnoreStackStatus"
    unpairing = removed[cloud.UNPAIRING_STATE_MACHINE]
    assert _ours_touching(gamma.security_group_id) == []  # found through our rules' tags: the stack tag is gone
    assert gamma.head_role_arn not in _secret_readers()
    # gamma keeps running, so it must get its own accounting back; here SSM cannot reach its head node, and the
    # unpairing says so (the lab test shows the successful case on real daemons).
    assert (unpairing["status"], unpairing["error"]) == ("FAILED", "DetachDepartingClusterFailed")
    assert "AmazonSSMManagedInstanceCore" in unpairing["cause"]
    # the cause is the step's message, not the Lambda's error payload (tests/workflow/test_failure_causes.py)
    assert unpairing["cause"].startswith("NodeUnreachable: ") and "stackTrace" not in unpairing["cause"]
    assert cloud.state_names(unpairing["executionArn"], REGION)[-9:] == [
        "DetachDepartingClusterFailed", "ReleaseFederationLease", "HowDidTheUnpairingEnd", "IsTheFailureALambdaError",
        "ReadTheLambdaError", "HasTheLambdaErrorAMessage", "WordTheFailure", "PublishUnpairingFailed", "UnpairingFailed"]

    added = route(cloud.tag_change_event(gamma.stack_id, REGION, [FEDERATION_KEY], {FEDERATION_KEY: "hpc"}))
    assert cloud.state_names(added[cloud.UNPAIRING_STATE_MACHINE]["executionArn"], REGION)[-1] == "NotAFederationMember"
    pairing_states = cloud.state_names(added[cloud.PAIRING_STATE_MACHINE]["executionArn"], REGION)
    assert "DiscoverFederation" in pairing_states  # the opt-in starts a pairing of gamma


def _untag(name: str, federation: str | None = None) -> None:
    """UpdateStack with the federation tag removed (or set to ``federation``): what `pcluster update-cluster` does."""
    tags = [{"Key": "parallelcluster:version", "Value": "3.11.1"}, {"Key": "parallelcluster:cluster-name", "Value": name}]
    if federation is not None:
        tags.append({"Key": FEDERATION_KEY, "Value": federation})
    boto3.client("cloudformation", region_name=REGION).update_stack(StackName=name, UsePreviousTemplate=True, Tags=tags)


def test_a_tag_removed_through_an_update_unpairs_on_update_complete_alone(moto_aws, federation, route):
    gamma = federation["gamma"]
    _untag("gamma")  # no aws.tag event arrives: only the stack's UPDATE_COMPLETE

    outcomes = route(cloud.stack_status_event(gamma.stack_id, "UPDATE_COMPLETE", REGION))

    assert set(outcomes) == {cloud.PAIRING_STATE_MACHINE, cloud.UNPAIRING_STATE_MACHINE}
    assert cloud.state_names(outcomes[cloud.PAIRING_STATE_MACHINE]["executionArn"], REGION)[-1] == "NotAFederationMember"
    unpairing = outcomes[cloud.UNPAIRING_STATE_MACHINE]
    assert "RevokeDepartingIngress" in cloud.state_names(unpairing["executionArn"], REGION)
    assert _ours_touching(gamma.security_group_id) == []
    assert gamma.head_role_arn not in _secret_readers()


def test_an_update_of_a_member_that_is_still_tagged_unpairs_nothing(moto_aws, federation, route):
    beta = federation["beta"]
    rules_before = sorted(r["SecurityGroupRuleId"] for r in _rules())
    outcomes = route(cloud.stack_status_event(beta.stack_id, "UPDATE_COMPLETE", REGION))
    unpairing = outcomes[cloud.UNPAIRING_STATE_MACHINE]
    assert cloud.state_names(unpairing["executionArn"], REGION)[-1] == "NotAFederationMember"
    assert "still asks to join hpc" in json.loads(unpairing["output"])["departure"]["reason"]
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_before


@pytest.mark.parametrize("value", ["other-federation", "not valid!"])
def test_a_tag_value_changed_to_anything_still_unpairs_from_where_it_was_paired(moto_aws, federation, route, value):
    gamma = federation["gamma"]
    _untag("gamma", value)
    outcomes = route(cloud.tag_change_event(gamma.stack_id, REGION, [FEDERATION_KEY], {FEDERATION_KEY: value}))
    unpairing = outcomes[cloud.UNPAIRING_STATE_MACHINE]
    assert "RevokeDepartingIngress" in cloud.state_names(unpairing["executionArn"], REGION), unpairing.get("cause")
    assert _ours_touching(gamma.security_group_id) == []  # found by our rules' StackId tags, not by the tag value
    assert gamma.head_role_arn not in _secret_readers()


def test_tag_changes_of_other_keys_or_resources_start_nothing(moto_aws, federation, route):
    gamma = federation["gamma"]
    assert route(cloud.tag_change_event(gamma.stack_id, REGION, ["team"], {"team": "cfd"})) == {}
    other = cloud.tag_change_event(gamma.stack_id, REGION, [FEDERATION_KEY], {})
    other["detail"]["service"], other["detail"]["resource-type"] = "ec2", "instance"
    assert route(other) == {}
    assert _ours_touching(gamma.security_group_id)


@pytest.mark.parametrize("resource", ["arn:aws:cloudformation:us-east-1:123456789012:stack/gamma;reboot/x",
                                      "arn:aws:s3:::bucket", "$(id)"])
def test_hostile_tag_change_events_are_rejected_before_anything_runs(moto_aws, federation, route, resource):
    event = cloud.tag_change_event(federation["gamma"].stack_id, REGION, [FEDERATION_KEY], {})
    event["resources"] = [resource]
    rules_before = sorted(r["SecurityGroupRuleId"] for r in _rules())
    for result in route(event).values():
        assert result["status"] == "FAILED" and result["error"] == "InvalidInput"
        assert cloud.state_names(result["executionArn"], REGION) == ["NormalizeTrigger"]
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_before


def test_deleting_a_cluster_that_never_joined_changes_nothing(moto_aws, federation, route):
    plain = moto_aws.cluster("plain", "10.250.0.41", [])
    rules_before = sorted(r["SecurityGroupRuleId"] for r in _rules())
    result = route(cloud.stack_status_event(plain.stack_id, "DELETE_IN_PROGRESS", REGION))[cloud.UNPAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED"
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_before


def test_deleting_a_tagged_cluster_nobody_admitted_changes_nothing(moto_aws, federation, route):
    asked = moto_aws.cluster("asked", "10.250.0.41", [], FEDERATION_TAGS, admit=None)  # tagged, never admitted
    queue = cloud.events_queue(REGION)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    policy_before = secrets.get_resource_policy(SecretId=SECRET).get("ResourcePolicy")
    rules_before = sorted(r["SecurityGroupRuleId"] for r in _rules())
    result = route(cloud.stack_status_event(asked.stack_id, "DELETE_IN_PROGRESS", REGION))[cloud.UNPAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    assert secrets.get_resource_policy(SecretId=SECRET).get("ResourcePolicy") == policy_before  # not even rewritten
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_before
    assert [e for e in cloud.published(queue, REGION) if e["detail-type"].startswith("Slurm Cluster")] == []


def test_revoking_a_member_in_the_registry_unpairs_it_and_rotates_the_others_without_it(moto_aws, federation, route):
    beta, alpha, gamma = federation["beta"], federation["alpha"], federation["gamma"]
    queue = cloud.events_queue(REGION)

    name = revoke_cluster(REGION, "hpc", beta.stack_id)  # what `aws ssm delete-parameter` does
    outcomes = route(parameter_change_event(name, "Delete", REGION))

    assert cloud.state_names(outcomes[cloud.PAIRING_STATE_MACHINE]["executionArn"], REGION)[-1] == "IgnoreStackStatus"
    result = outcomes[cloud.UNPAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert _ours_touching(beta.security_group_id) == []
    assert beta.head_role_arn not in _secret_readers()
    assert _secret_readers() == sorted([alpha.head_role_arn, gamma.head_role_arn])
    assert moto_aws.commands == []  # nothing is run on a cluster that may be compromised
    output = json.loads(result["output"])
    assert output["detach"]["action"] == "none" and "revoked" in output["detach"]["reason"]
    unpaired = [e for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Cluster Unpaired"]
    assert [(e["detail"]["cluster"], e["detail"]["trigger"]) for e in unpaired] == [("beta", "revoked")]
    # The remaining members rotate to a key beta never saw: the rotation is started, for alpha and gamma only.
    rotation_arn = output["eviction"]["rotationExecution"]
    rotation = cloud.wait_for_execution(rotation_arn, REGION, timeout=120)
    assert json.loads(rotation["input"]) == {"federation": "hpc", "region": REGION, "trigger": "eviction"}
    found = [e for e in cloud.history(rotation_arn, REGION)
             if e.get("stateExitedEventDetails", {}).get("name") == "DiscoverFederationMembers"]
    members = json.loads(found[0]["stateExitedEventDetails"]["output"])["discovery"]["members"]
    assert sorted(m["clusterName"] for m in members) == ["alpha", "gamma"]


def test_a_revocation_of_a_cluster_a_rule_still_admits_changes_nothing(moto_aws, federation, route):
    beta = federation["beta"]
    add_admission_rule(REGION, "hpc", "all-b", "123456789012", REGION, "b*")
    rules_before = sorted(r["SecurityGroupRuleId"] for r in _rules())
    name = revoke_cluster(REGION, "hpc", beta.stack_id)
    result = route(parameter_change_event(name, "Delete", REGION))[cloud.UNPAIRING_STATE_MACHINE]
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    assert "still admits it (admitted by admission rule all-b)" in json.loads(result["output"])["departure"]["reason"]
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_before


def test_deleting_a_stack_with_a_long_generated_name_changes_nothing(moto_aws, federation, route):
    # a nested stack of a member (CloudFormation deletes them with the cluster) carries the member's tags
    name = "beta-QueueGroup0NestedStackQueueGroup0NestedStackResource6B1D7D8F-1WQ4C2Q5XH7L9"
    stack_id = boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName=name, TemplateBody=json.dumps({"Resources": {}}),
        Tags=[{"Key": "parallelcluster:version", "Value": "3.14.0"}, {"Key": FEDERATION_KEY, "Value": "hpc"}])["StackId"]
    rules_before, readers_before = sorted(r["SecurityGroupRuleId"] for r in _rules()), _secret_readers()
    result = route(cloud.stack_status_event(stack_id, "DELETE_IN_PROGRESS", REGION))[cloud.UNPAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAFederationMember"
    assert sorted(r["SecurityGroupRuleId"] for r in _rules()) == rules_before
    assert _secret_readers() == readers_before


def test_manual_unpairing_rejects_pairing_options_and_hostile_names(moto_aws, federation):
    for request in ({"stackName": "beta", "region": REGION, "dryRun": True},
                    {"stackName": "beta;reboot", "region": REGION},
                    {"stackName": "beta", "region": REGION, "removeFromAccounting": "$(id)"}):
        arn = cloud.start_execution(moto_aws.deployment, request, cloud.UNPAIRING_STATE_MACHINE)
        result = cloud.wait_for_execution(arn, REGION, timeout=60)
        assert (result["status"], result["error"]) == ("FAILED", "InvalidInput"), request
    assert _ours_touching(federation["beta"].security_group_id)


def test_deleting_the_accounting_cluster_is_announced_loudly(moto_aws, federation, route, capfd):
    alpha = federation["alpha"]
    queue = cloud.events_queue(REGION)
    result = route(cloud.stack_status_event(alpha.stack_id, "DELETE_IN_PROGRESS", REGION))[cloud.UNPAIRING_STATE_MACHINE]

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert json.loads(result["output"])["accountingClusterLost"] is True
    assert _ours_touching(alpha.security_group_id) == []
    lost = [e for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Federation Accounting Cluster Lost"]
    assert len(lost) == 1 and lost[0]["detail"]["federation"] == "hpc" and "README" in lost[0]["detail"]["recovery"]
    # The metric (Powertools EMF on stdout, as CloudWatch Logs receives it) is the one the template's alarm watches.
    emf = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{") and '"_aws"' in line]
    emitted = [(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], m["Name"], d.get("service"))
               for d in emf for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    alarm = cloud.load_template()["Resources"]["AccountingClusterLostAlarm"]["Properties"]
    dimension = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    assert (alarm["Namespace"], alarm["MetricName"], dimension["service"]) in emitted
