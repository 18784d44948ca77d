"""A federation of many clusters in two regions in moto, for the network's scale tests and bench/scale.py.

The real pairing and unpairing ASL run in moto with the real handlers in-process; SSM reaches simulated nodes
(tests/workflow/test_pairing_secret.PairingNodes). Each cluster has a head node and one compute node; a cluster
created after the federation's group exists in its VPC carries it on its compute node, as the config snippet's
SlurmQueues AdditionalSecurityGroups makes ParallelCluster do; the first one of each VPC does not (fallback).
What is observed is EC2 itself: rules per head node group (a prefix list counted as its MaxEntries), security
groups per ENI, the federation's groups and prefix lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
from moto import mock_aws

from lab import cloud
from lab.parallelcluster import ClusterInAws, Network, create_cluster, create_network
from slurm_multicluster import ingress
from workflow.simulated_nodes import SimulatedNode
from workflow.test_pairing_secret import PairingNodes

HOME = "us-east-1"
OTHER = "eu-west-1"
FEDERATION = "hpc"
SUBNETS = {HOME: "10.240.0.0/24", OTHER: "10.241.0.0/24"}


@dataclass
class ScaleFederation:
    deployment: cloud.Deployment
    nodes: PairingNodes
    networks: dict[str, Network]
    clusters: dict[str, ClusterInAws] = field(default_factory=dict)
    federation_sha: str = ""
    api_calls: int = 0

    def create(self, name: str, region: str) -> ClusterInAws:
        """A tagged, admitted ParallelCluster cluster (head + one compute node) in ``region``."""
        index = len([c for c in self.clusters.values() if c.region == region])
        base = self.networks[region].cidr.rsplit(".", 1)[0]
        head_ip, compute_ip = f"{base}.{10 + 2 * index}", f"{base}.{11 + 2 * index}"
        tags = {"slurm-multicluster:federation": FEDERATION}
        if not self.clusters:
            tags["slurm-multicluster:role"] = "accounting"
        cluster = create_cluster(self.networks[region], name, head_ip, [compute_ip], tags, registry_region=HOME)
        group = federation_group(region, self.networks[region].vpc_id)
        if group:  # created from the config snippet: its queue's AdditionalSecurityGroups name the federation group
            ec2 = boto3.client("ec2", region_name=region)
            eni = network_interface(region, cluster.compute_instance_ids[0])
            ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=[cluster.security_group_id, group])
        self.clusters[name] = cluster
        self.nodes.ips[name] = head_ip
        key = self.federation_sha  # every member already runs the federation key: the network is under test
        self.nodes.add(SimulatedNode(f"{name}-head", name, "head", cluster.head_instance_id, key, key))
        self.nodes.add(SimulatedNode(f"{name}-compute-1", name, "compute", cluster.compute_instance_ids[0], key))
        self.nodes.roles[name] = cluster.head_role_arn
        return cluster

    def pair(self, name: str) -> dict[str, Any]:
        arn = cloud.start_execution(self.deployment, {"stackName": name, "region": self.clusters[name].region})
        return cloud.wait_for_execution(arn, HOME, timeout=300)

    def delete(self, name: str) -> dict[str, Any]:
        """The cluster's stack deletion: DELETE_IN_PROGRESS starts the unpairing (the event reaches the home
        region's rules through the forwarder in the other region); then CloudFormation finishes the deletion."""
        cluster, result = self.unpair_on_deletion(name)
        finish_deletion(cluster)
        return result

    def unpair_on_deletion(self, name: str) -> tuple[ClusterInAws, dict[str, Any]]:
        """The unpairing DELETE_IN_PROGRESS starts, run to its end while the cluster's nodes still run (CloudFormation
        has not reached them yet): the departed cluster, no longer a member, and the unpairing's execution."""
        cluster = self.clusters.pop(name)
        event = cloud.stack_status_event(cluster.stack_id, "DELETE_IN_PROGRESS", cluster.region)
        started = cloud.route_event_to_all(self.deployment, event)
        return cluster, cloud.wait_for_execution(started[cloud.UNPAIRING_STATE_MACHINE], HOME, timeout=300)


def finish_deletion(cluster: ClusterInAws) -> None:
    """What CloudFormation does after DELETE_IN_PROGRESS: the cluster's instances terminated, its stack deleted."""
    boto3.client("ec2", region_name=cluster.region).terminate_instances(InstanceIds=cluster.instance_ids)
    boto3.client("cloudformation", region_name=cluster.region).delete_stack(StackName=cluster.stack_id)


def federation_group(region: str, vpc_id: str) -> str | None:
    ec2 = boto3.client("ec2", region_name=region)
    found = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {
        "Name": "group-name", "Values": [ingress.resource_name("default", FEDERATION)]}])["SecurityGroups"]
    return found[0]["GroupId"] if found else None


def network_interface(region: str, instance_id: str) -> str:
    instance = boto3.client("ec2", region_name=region).describe_instances(InstanceIds=[instance_id])
    return instance["Reservations"][0]["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]


def head_group_rules(federation: ScaleFederation) -> dict[str, int]:
    """Inbound rules of every head node group as the quota counts them (prefix list = its MaxEntries)."""
    counts = {}
    for name, cluster in federation.clusters.items():
        ec2 = boto3.client("ec2", region_name=cluster.region)
        counts[name] = ingress.rule_weight(ec2, ingress.rules_on_group(ec2, cluster.security_group_id))
    return counts


def groups_per_eni(federation: ScaleFederation) -> dict[str, int]:
    """Security groups on every node's primary ENI."""
    counts = {}
    for cluster in federation.clusters.values():
        ec2 = boto3.client("ec2", region_name=cluster.region)
        for instance_id in cluster.instance_ids:
            eni = network_interface(cluster.region, instance_id)
            described = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
            counts[instance_id] = len(described["Groups"])
    return counts


def scale_federation(aws_env: None, parameters: dict[str, str] | None = None) -> Iterator[ScaleFederation]:
    """moto with the template deployed (members searched in two regions, and ``parameters``), SSM reaching
    simulated nodes."""
    from slurm_multicluster import aws

    aws.client.cache_clear()
    with mock_aws(config=cloud.MOTO_CONFIG):
        deployment = cloud.deploy(HOME, {"VerifyDeadlineSeconds": "10", "FederationRegions": OTHER, **(parameters or {})})
        networks = {region: create_network(region, cidr) for region, cidr in SUBNETS.items()}
        nodes = PairingNodes(HOME, "alpha", {})
        nodes.secret_id = f"slurm-multicluster/default/{FEDERATION}/munge-key"
        federation = ScaleFederation(deployment, nodes, networks)
        federation.federation_sha = nodes.key(os.urandom(1024))
        with cloud.real_lambda_handlers(deployment), cloud.ssm_runs_on(nodes.execute, routable=nodes.knows):
            yield federation
    aws.client.cache_clear()
