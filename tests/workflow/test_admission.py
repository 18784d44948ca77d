"""Admission (real ASL + handlers in moto): a tag only asks; the registry decides; identities are StackIds.

SSM reaches no node here, so an admitted cluster's pairing goes on to ReadSlurmSettings and stops there (the lab
tests pair admitted clusters on real daemons); what these tests prove is what a cluster nobody admitted gets:
nothing at all.
"""

from __future__ import annotations

import json

import boto3
import pytest

from lab import cloud
from lab.parallelcluster import (AMI, add_admission_rule, admit_cluster, create_cluster, create_network,
                                 parameter_change_event)
from slurm_multicluster import discovery, pairing
from slurm_multicluster.aws import client
from slurm_multicluster.models import PairingRequest
from slurm_multicluster.settings import Settings
from workflow.conftest import REGION

FEDERATION_TAGS = {"slurm-multicluster:federation": "hpc"}
ACCOUNTING_TAGS = {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"}  # the lab's marker: admit as accounting
ACCOUNT_ID = "123456789012"


def _our_rules() -> list[dict]:
    ec2 = boto3.client("ec2", region_name=REGION)
    return ec2.describe_security_group_rules(
        Filters=[{"Name": "tag-key", "Values": ["slurm-multicluster:federation"]}])["SecurityGroupRules"]


def _nothing_changed(moto_aws) -> None:
    assert _our_rules() == []
    assert boto3.client("secretsmanager", region_name=REGION).list_secrets()["SecretList"] == []
    assert moto_aws.commands == []


def _discovery(result: dict) -> dict:
    events = cloud.history(result["executionArn"], REGION)
    exited = [e for e in events if e.get("stateExitedEventDetails", {}).get("name") == "DiscoverFederation"]
    return json.loads(exited[0]["stateExitedEventDetails"]["output"])["discovery"]


@pytest.fixture
def alpha(moto_aws):
    """The accounting cluster, declared in the registry as the federation's accounting stack."""
    return moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)


@pytest.mark.parametrize("how", ["created", "updated", "tag added"])
def test_a_tagged_cluster_nobody_admitted_gets_nothing_and_is_announced(moto_aws, alpha, how, capfd):
    queue = cloud.events_queue(REGION)
    beta = moto_aws.cluster("beta", "10.250.0.21", ["10.250.0.22"], FEDERATION_TAGS, admit=None)
    event = (cloud.tag_change_event(beta.stack_id, REGION, ["slurm-multicluster:federation"], FEDERATION_TAGS)
             if how == "tag added" else
             cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE" if how == "created" else "UPDATE_COMPLETE", REGION))

    result = cloud.wait_for_execution(cloud.route_event_to_all(moto_aws.deployment, event)["PairingStateMachine"],
                                      REGION, timeout=120)

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert cloud.state_names(result["executionArn"], REGION)[-2:] == ["PublishNotAdmitted", "NotAdmitted"]
    _nothing_changed(moto_aws)
    announced = [e for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Cluster Not Admitted"]
    assert [(e["detail"]["stackId"], e["detail"]["federation"], e["detail"]["outcome"]) for e in announced] == [
        (beta.stack_id, "hpc", "not admitted")]
    assert "no registry entry or admission rule" in announced[0]["detail"]["reason"]
    emf = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{") and '"_aws"' in line]
    counted = [(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], m["Name"], d[m["Name"]])
               for d in emf for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert ("SlurmMulticluster", "ClusterNotAdmitted", [1.0]) in counted or (
        "SlurmMulticluster", "ClusterNotAdmitted", 1.0) in counted, counted


def test_a_tagged_cluster_of_an_undeclared_federation_gets_nothing(moto_aws):
    lone = moto_aws.cluster("lone", "10.250.0.41", [], {"slurm-multicluster:federation": "nobody-declared-it"},
                            admit=None)
    result = moto_aws.run_event(cloud.stack_status_event(lone.stack_id, "CREATE_COMPLETE", REGION))
    assert result["status"] == "SUCCEEDED"
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAdmitted"
    assert "is not declared in the registry" in _discovery(result)["reason"]
    _nothing_changed(moto_aws)


def test_admitted_by_its_stack_arn_the_pairing_goes_on(moto_aws, alpha):
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit="member")
    result = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))
    found = _discovery(result)
    assert (found["member"], found["reason"]) == (True, "admitted by its stack ARN")
    assert sorted((m["clusterName"], m["isAccounting"]) for m in found["members"]) == [("alpha", True), ("beta", False)]
    assert "ReadSlurmSettings" in cloud.state_names(result["executionArn"], REGION)  # then SSM (unreachable here)


def test_admitted_by_a_rule_declared_before_the_cluster_existed(moto_aws, alpha):
    add_admission_rule(REGION, "hpc", "hpc-clusters", ACCOUNT_ID, REGION, "beta-*")
    beta = moto_aws.cluster("beta-2026", "10.250.0.21", [], FEDERATION_TAGS, admit=None)
    other = moto_aws.cluster("gamma", "10.250.0.31", [], FEDERATION_TAGS, admit=None)  # the pattern does not match

    found = _discovery(moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION)))
    assert (found["member"], found["reason"]) == (True, "admitted by admission rule hpc-clusters")
    refused = moto_aws.run_event(cloud.stack_status_event(other.stack_id, "CREATE_COMPLETE", REGION))
    assert cloud.state_names(refused["executionArn"], REGION)[-1] == "NotAdmitted"


def test_a_rule_of_another_region_or_account_admits_nothing(moto_aws, alpha):
    add_admission_rule(REGION, "hpc", "west", ACCOUNT_ID, "us-west-2", "*")
    add_admission_rule(REGION, "hpc", "elsewhere", "999999999999", REGION, "*")
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit=None)
    result = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAdmitted"


def test_a_second_stack_tagged_as_accounting_changes_nothing(moto_aws, alpha):
    claimant = moto_aws.cluster("claimant", "10.250.0.51", [], ACCOUNTING_TAGS, admit=None)
    result = moto_aws.run_event(cloud.stack_status_event(claimant.stack_id, "CREATE_COMPLETE", REGION))
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAdmitted"
    _nothing_changed(moto_aws)
    # Even admitted as a member, its role tag makes it no accounting cluster: the registry's ARN does.
    admit_cluster(REGION, "hpc", claimant.stack_id)
    found = _discovery(moto_aws.run_event(cloud.stack_status_event(claimant.stack_id, "UPDATE_COMPLETE", REGION)))
    assert {m["clusterName"]: m["isAccounting"] for m in found["members"]} == {"alpha": True, "claimant": False}


def test_an_invalid_registry_entry_admits_nothing(moto_aws, alpha):
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit=None)
    name = admit_cluster(REGION, "hpc", beta.stack_id)
    boto3.client("ssm", region_name=REGION).put_parameter(  # a value naming another stack than its path
        Name=name, Type="String", Overwrite=True, Value=alpha.stack_id.replace("alpha", "beta", 1)[:-4] + "0000")
    result = moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAdmitted"


def test_admitting_a_tagged_cluster_pairs_it_at_once(moto_aws, alpha):
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit=None)
    name = admit_cluster(REGION, "hpc", beta.stack_id)
    started = cloud.route_event_to_all(moto_aws.deployment, parameter_change_event(name, "Create", REGION))
    result = cloud.wait_for_execution(started["PairingStateMachine"], REGION, timeout=120)
    found = _discovery(result)
    assert (found["member"], found["stackId"]) == (True, beta.stack_id)
    unpairing = cloud.wait_for_execution(started["UnpairingStateMachine"], REGION, timeout=120)
    assert cloud.state_names(unpairing["executionArn"], REGION)[-1] == "IgnoreTrigger"  # only a deletion unpairs


def test_a_parameter_outside_the_registry_starts_nothing(moto_aws, alpha):
    started = cloud.route_event_to_all(moto_aws.deployment,
                                       parameter_change_event("/other-app/config", "Create", REGION))
    assert started == {}  # the rules match this deployment's registry prefix only
    other_deployment = parameter_change_event(
        "/slurm-multicluster/other/federations/hpc/members/us-east-1/alpha/" + alpha.stack_id[-36:], "Delete", REGION)
    assert cloud.route_event_to_all(moto_aws.deployment, other_deployment) == {}


def test_a_stray_instance_tagged_as_a_head_node_is_never_trusted(moto_aws, alpha):
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit="member")
    ec2 = boto3.client("ec2", region_name=REGION)
    iam = boto3.client("iam", region_name=REGION)
    iam.create_role(RoleName="attacker", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="attacker")
    iam.add_role_to_instance_profile(InstanceProfileName="attacker", RoleName="attacker")
    stray = ec2.run_instances(  # anyone who can launch an instance can set these tags
        ImageId=AMI, MinCount=1, MaxCount=1, SubnetId=moto_aws.network.subnet_id, PrivateIpAddress="10.250.0.99",
        IamInstanceProfile={"Name": "attacker"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "parallelcluster:cluster-name", "Value": "beta"},
            {"Key": "parallelcluster:node-type", "Value": "HeadNode"}, {"Key": "Name", "Value": "HeadNode"}]}],
    )["Instances"][0]["InstanceId"]

    found = _discovery(moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION)))

    heads = {m["clusterName"]: m["headNode"] for m in found["members"]}
    assert heads["beta"]["instanceId"] == beta.head_instance_id != stray
    assert "attacker" not in json.dumps(found)
    assert all(stray != c["InstanceId"] for c in moto_aws.commands)


def test_a_head_node_without_cloudformation_tags_is_not_a_head_node(moto_aws, alpha):
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit="member")
    boto3.client("ec2", region_name=REGION).delete_tags(
        Resources=[beta.head_instance_id], Tags=[{"Key": "aws:cloudformation:logical-id"}])  # moto allows it; AWS never
    request = PairingRequest(action="pair", stack_name="beta", stack_id=beta.stack_id, region=REGION,
                             trigger="manual", execution_name="x")
    with pytest.raises(Exception, match="expected one running head node created by its stack"):
        pairing.discover(client, request, Settings(deployment_region=REGION))


@pytest.mark.parametrize("deployment_parameters", [{"FederationRegions": "us-west-2"}])  # its events forwarded home
def test_a_same_named_stack_in_another_region_is_another_cluster(moto_aws, alpha):
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit="member")
    west = create_network("us-west-2", "10.251.0.0/24")
    impostor = create_cluster(west, "beta", "10.251.0.21", [], FEDERATION_TAGS, admit=None)
    assert impostor.stack_id != beta.stack_id

    result = moto_aws.run_event(cloud.stack_status_event(impostor.stack_id, "CREATE_COMPLETE", "us-west-2"))

    assert cloud.state_names(result["executionArn"], REGION)[-1] == "NotAdmitted"
    members = discovery.federation_stacks(client, ["us-east-1", "us-west-2"],
                                          pairing.registry.declared(client, Settings(deployment_region=REGION), "hpc"),
                                          Settings(deployment_region=REGION))
    assert sorted(s["StackId"] for _, s in members) == sorted([alpha.stack_id, beta.stack_id])


def test_two_deployments_in_one_account_never_touch_each_others_clusters(moto_aws, alpha):
    from types import SimpleNamespace

    from slurm_multicluster import ingress, registry

    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit="member")  # admitted by "default"
    other = cloud.deploy(REGION, {"DeploymentId": "other"}, stack="other-deployment")
    config = Settings(deployment_region=REGION)
    declared = registry.declared(client, config, "hpc")
    stacks = boto3.client("cloudformation", region_name=REGION).describe_stacks()["Stacks"]
    members = [discovery.member(client, s, REGION, declared, config) for s in stacks if s["StackName"] in ("alpha", "beta")]
    from slurm_multicluster.models import SlurmSettings

    members = [m.model_copy(update={"slurm": SlurmSettings(
        cluster_name=m.cluster_name, slurmctld_port="6820-6829", dbd_port=6819 if m.is_accounting else None,
        slurm_version="24.11.5", munge_key_sha256="0" * 64)}) for m in members]
    ingress.connect(lambda r: client("ec2", r), lambda r: client("service-quotas", r), members, "pair-beta", "default")
    rules_before = sorted(r["SecurityGroupRuleId"] for r in _our_rules())
    assert rules_before

    both = SimpleNamespace(function_code={**moto_aws.deployment.function_code, **other.function_code})
    with cloud.real_lambda_handlers(both):
        created = cloud.wait_for_execution(cloud.route_event_to_all(
            other, cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION))["PairingStateMachine"], REGION)
        deleted = cloud.wait_for_execution(cloud.route_event_to_all(
            other, cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", REGION))["UnpairingStateMachine"], REGION)

    assert cloud.state_names(created["executionArn"], REGION)[-1] == "NotAdmitted"  # "other" admitted nobody
    assert cloud.state_names(deleted["executionArn"], REGION)[-1] == "NotAFederationMember"
    assert sorted(r["SecurityGroupRuleId"] for r in _our_rules()) == rules_before  # "default"'s rules untouched
    assert all(any(t == {"Key": "slurm-multicluster:deployment", "Value": "default"} for t in r["Tags"])
               for r in _our_rules())


def test_an_admitted_peer_without_a_head_node_is_skipped_and_named_not_a_blocker(moto_aws, alpha):
    broken = moto_aws.cluster("broken", "10.250.0.61", [], FEDERATION_TAGS, admit="member")
    boto3.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[broken.head_instance_id])
    beta = moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS, admit="member")

    found = _discovery(moto_aws.run_event(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", REGION)))

    assert found["member"] is True
    assert sorted(m["clusterName"] for m in found["members"]) == ["alpha", "beta"]
    assert [(s["clusterName"], s["stackId"]) for s in found["skipped"]] == [("broken", broken.stack_id)]
    assert "expected one running head node" in found["skipped"][0]["reason"]
    # the cluster the pairing is about still fails loudly when it does not resolve
    refused = moto_aws.run_event(cloud.stack_status_event(broken.stack_id, "UPDATE_COMPLETE", REGION))
    assert refused["status"] == "FAILED" and "expected one running head node" in refused["cause"]
