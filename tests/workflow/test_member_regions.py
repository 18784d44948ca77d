"""Members in other regions (issue 9): their stack events reach the deployment region's workflows through
region-forwarder.yaml, deployed in each FederationRegions region; a region not listed pairs nothing.

Real ASL and handlers in moto; EventBridge is regional as on AWS (lab/cloud.py ``route_event``: an event of
another region reaches the home rules only through a forwarding rule deployed there, its envelope unchanged);
nodes simulated behind the SSM seam (the pairing simulator of test_pairing_secret.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws
from moto.events.models import EventPattern

from lab import cloud
from lab.parallelcluster import ClusterInAws, create_cluster, create_network
from workflow.conftest import REGION
from workflow.simulated_nodes import SimulatedNode
from workflow.test_pairing_secret import PairingNodes, may

WEST = "us-west-2"  # listed in FederationRegions, region-forwarder.yaml deployed there
UNLISTED = "eu-central-1"
FEDERATION = "hpc"
SECRET = f"slurm-multicluster/default/{FEDERATION}/munge-key"
TAGS = {"slurm-multicluster:federation": FEDERATION}
CLUSTERS = {"alpha": (REGION, "10.254.0.11"), "beta": (WEST, "10.254.1.21")}


@dataclass
class TwoRegions:
    deployment: cloud.Deployment
    nodes: PairingNodes
    clusters: dict[str, ClusterInAws]
    federation_sha: str

    def deliver(self, event: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Put ``event`` on its own region's bus; the outcome of every home execution it started."""
        started = cloud.route_event_to_all(self.deployment, event)
        return {machine: cloud.wait_for_execution(arn, REGION, timeout=120) for machine, arn in started.items()}

    def cluster_in(self, region: str, name: str, ip: str, admit: str | None = "member") -> ClusterInAws:
        """A tagged cluster in ``region``, admitted in the registry (which lives in the deployment region)."""
        network = create_network(region, ip.rsplit(".", 1)[0] + ".0/24")
        return create_cluster(network, name, ip, [], TAGS, admit=admit, registry_region=REGION)


def our_rules(region: str) -> list[dict[str, Any]]:
    return boto3.client("ec2", region_name=region).describe_security_group_rules(
        Filters=[{"Name": "tag-key", "Values": ["slurm-multicluster:federation"]}])["SecurityGroupRules"]


def executions() -> list[dict[str, Any]]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    return [e for m in sfn.list_state_machines()["stateMachines"]
            for e in sfn.list_executions(stateMachineArn=m["stateMachineArn"])["executions"]]


@pytest.fixture
def two_regions(aws_env: None) -> Iterator[TwoRegions]:
    """Deployed in us-east-1 with FederationRegions=us-west-2 (so its forwarder is deployed there too); alpha, the
    accounting cluster, in us-east-1 runs the federation key; beta, admitted, in us-west-2 runs its own."""
    from slurm_multicluster import aws

    aws.client.cache_clear()
    with mock_aws(config=cloud.MOTO_CONFIG):
        deployment = cloud.deploy(REGION, {"VerifyDeadlineSeconds": "10", "FederationRegions": WEST})
        nodes = PairingNodes(REGION, "alpha", {name: ip for name, (_, ip) in CLUSTERS.items()})
        federation_sha, beta_sha = nodes.key(os.urandom(1024)), nodes.key(os.urandom(1024))
        clusters = {}
        for name, (region, ip) in CLUSTERS.items():
            tags = {**TAGS, **({"slurm-multicluster:role": "accounting"} if name == "alpha" else {})}
            network = create_network(region, ip.rsplit(".", 1)[0] + ".0/24")
            clusters[name] = create_cluster(network, name, ip, [ip[:-1] + "2"], tags, registry_region=REGION)
            key_sha = federation_sha if name == "alpha" else beta_sha
            nodes.add(SimulatedNode(f"{name}-head", name, "head", clusters[name].head_instance_id, key_sha, key_sha))
            nodes.add(SimulatedNode(f"{name}-compute-1", name, "compute", clusters[name].compute_instance_ids[0], key_sha))
            nodes.roles[name] = clusters[name].head_role_arn
        nodes.secret_id = SECRET
        with cloud.real_lambda_handlers(deployment), cloud.ssm_runs_on(nodes.execute, routable=nodes.knows):
            yield TwoRegions(deployment, nodes, clusters, federation_sha)
    aws.client.cache_clear()


def test_a_member_created_in_a_federation_region_is_paired_by_the_home_workflow(two_regions):
    beta = two_regions.clusters["beta"]

    outcome = two_regions.deliver(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", WEST))

    assert list(outcome) == [cloud.PAIRING_STATE_MACHINE]
    result = outcome[cloud.PAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "Paired"
    # ingress is opened where each head node lives: beta's group in us-west-2, alpha's in us-east-1
    assert beta.security_group_id in {r["GroupId"] for r in our_rules(WEST)}
    assert two_regions.clusters["alpha"].security_group_id in {r["GroupId"] for r in our_rules(REGION)}
    # beta's nodes (in us-west-2, reached through SSM there) run the federation key, which its role may read
    assert {n.name: n.key_sha for n in two_regions.nodes.of("beta")} == {
        "beta-head": two_regions.federation_sha, "beta-compute-1": two_regions.federation_sha}
    policy = boto3.client("secretsmanager", region_name=REGION).get_resource_policy(SecretId=SECRET)["ResourcePolicy"]
    assert may(policy, beta.head_role_arn, "secretsmanager:GetSecretValue")


def test_deleting_a_member_in_a_federation_region_unpairs_it_from_the_home_region(two_regions):
    beta = two_regions.clusters["beta"]
    assert two_regions.deliver(cloud.stack_status_event(beta.stack_id, "CREATE_COMPLETE", WEST))[
        cloud.PAIRING_STATE_MACHINE]["status"] == "SUCCEEDED"
    assert beta.security_group_id in {r["GroupId"] for r in our_rules(WEST)}

    outcome = two_regions.deliver(cloud.stack_status_event(beta.stack_id, "DELETE_IN_PROGRESS", WEST))

    result = outcome[cloud.UNPAIRING_STATE_MACHINE]
    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert cloud.state_names(result["executionArn"], REGION)[-1] == "Unpaired"
    assert beta.security_group_id not in {r["GroupId"] for r in our_rules(WEST)}
    assert not [r for region in (WEST, REGION) for r in our_rules(region)
                if beta.stack_id in {t["Value"] for t in r.get("Tags", [])}], "a rule of ours still names beta"
    policy = boto3.client("secretsmanager", region_name=REGION).get_resource_policy(SecretId=SECRET)["ResourcePolicy"]
    assert not may(policy, beta.head_role_arn, "secretsmanager:GetSecretValue")


def test_an_event_of_a_region_without_a_forwarder_starts_nothing(two_regions):
    gamma = two_regions.cluster_in(UNLISTED, "gamma", "10.254.2.31")  # tagged, even admitted: still not listed
    before = executions()

    assert cloud.route_event_to_all(two_regions.deployment,
                                    cloud.stack_status_event(gamma.stack_id, "CREATE_COMPLETE", UNLISTED)) == {}

    assert executions() == before
    assert our_rules(UNLISTED) == [] and our_rules(REGION) == [] and two_regions.nodes.calls == []


def test_a_forwarded_event_from_a_region_not_in_federation_regions_is_refused_and_changes_nothing(two_regions):
    cloud.deploy_region_forwarder(UNLISTED, REGION)  # a forwarder deployed there, the region never listed
    gamma = two_regions.cluster_in(UNLISTED, "gamma", "10.254.2.31")

    outcome = two_regions.deliver(cloud.stack_status_event(gamma.stack_id, "UPDATE_COMPLETE", UNLISTED))

    assert set(outcome) == {cloud.PAIRING_STATE_MACHINE, cloud.UNPAIRING_STATE_MACHINE}
    for result in outcome.values():
        assert (result["status"], result["error"]) == ("FAILED", "InvalidInput")
        assert f"region {UNLISTED} of stack gamma is not one of this deployment's regions (us-east-1, us-west-2)" \
            in result["cause"] and "add it to FederationRegions" in result["cause"]
        assert cloud.state_names(result["executionArn"], REGION) == ["NormalizeTrigger"]
    assert our_rules(UNLISTED) == [] and our_rules(REGION) == [] and two_regions.nodes.calls == []
    assert boto3.client("secretsmanager", region_name=REGION).list_secrets()["SecretList"] == []


def test_a_manual_pairing_in_a_region_not_in_federation_regions_is_refused(two_regions):
    gamma = two_regions.cluster_in(UNLISTED, "gamma", "10.254.2.31")

    result = cloud.wait_for_execution(cloud.start_execution(
        two_regions.deployment, {"stackName": "gamma", "stackId": gamma.stack_id, "region": UNLISTED}), REGION)

    assert (result["status"], result["error"]) == ("FAILED", "InvalidInput")
    assert "add it to FederationRegions" in result["cause"]
    assert two_regions.nodes.calls == []


def _sample_events(stack_id: str, region: str, tag_key: str) -> list[dict[str, Any]]:
    statuses = ["CREATE_COMPLETE", "UPDATE_COMPLETE", "DELETE_IN_PROGRESS", "CREATE_IN_PROGRESS", "ROLLBACK_COMPLETE",
                "UPDATE_ROLLBACK_COMPLETE", "DELETE_COMPLETE", "UPDATE_IN_PROGRESS"]
    return ([cloud.stack_status_event(stack_id, status, region) for status in statuses] +
            [cloud.tag_change_event(stack_id, region, keys, tags) for keys, tags in [
                ([tag_key], {tag_key: FEDERATION}), ([tag_key], {}), (["owner"], {"owner": "me"})]])


def test_the_forwarders_rules_forward_exactly_the_events_the_home_trigger_rules_match(two_regions):
    """As deployed (patterns resolved with the stack's parameters): every stack event a home trigger rule matches
    crosses exactly once, and nothing else crosses."""
    events = boto3.client("events", region_name=WEST)
    forwarders = [json.loads(r["EventPattern"]) for r in events.list_rules(NamePrefix="slurm-multicluster-forwarder")["Rules"]]
    assert forwarders
    home = [pattern for _, pattern in two_regions.deployment.rule_patterns if pattern["source"] != ["aws.ssm"]]
    tag_key = two_regions.deployment.parameters["FederationTagKey"]
    for event in _sample_events(two_regions.clusters["beta"].stack_id, WEST, tag_key):
        crossing = sum(EventPattern.load(json.dumps(p)).matches_event(event) for p in forwarders)
        wanted = any(EventPattern.load(json.dumps(p)).matches_event(event) for p in home)
        assert crossing == (1 if wanted else 0), (event["detail-type"], event["detail"])
