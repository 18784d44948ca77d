"""Fixtures for running the real state machine in moto with the real handlers in-process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from moto import mock_aws

from lab import cloud
from lab.parallelcluster import ClusterInAws, Network, create_cluster, create_network

REGION = "us-east-1"
FEDERATION_TAGS = {"slurm-multicluster:federation": "hpc"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@dataclass
class MotoAws:
    deployment: cloud.Deployment
    commands: list[dict[str, Any]]
    network: Network
    ssm_unregistered: set[str] = field(default_factory=set)  # instances DescribeInstanceInformation does not list

    def run_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        arn = cloud.route_event(self.deployment, event)
        return None if arn is None else cloud.wait_for_execution(arn, REGION, timeout=120)

    def run_manual(self, request: dict[str, Any]) -> dict[str, Any]:
        arn = cloud.start_execution(self.deployment, request)
        return cloud.wait_for_execution(arn, REGION, timeout=120)

    def cluster(self, name: str, head_ip: str, compute_ips: list[str], tags: dict[str, str] | None = None,
                admit: str | None = "auto") -> ClusterInAws:
        """A ParallelCluster-shaped cluster; ``admit`` as in lab.parallelcluster.create_cluster (auto: an admin
        admitted every tagged cluster, the one tagged with the lab's accounting marker as the accounting one)."""
        return create_cluster(self.network, name, head_ip, compute_ips, tags, admit=admit)


@pytest.fixture
def deployment_parameters() -> dict[str, str]:
    """Template parameters of ``moto_aws``'s deployment; a test overrides them with
    ``@pytest.mark.parametrize("deployment_parameters", [{...}])``."""
    return {}


@pytest.fixture
def moto_aws(aws_env: None, deployment_parameters: dict[str, str]) -> Iterator[MotoAws]:
    """moto with the template deployed; SSM lists every instance as Online (but those in ``ssm_unregistered``)
    and reaches no node (commands fail as for an agent that stopped answering)."""
    from slurm_multicluster import aws

    aws.client.cache_clear()
    unregistered: set[str] = set()
    with mock_aws(config=cloud.MOTO_CONFIG):
        deployment = cloud.deploy(REGION, deployment_parameters)
        with cloud.real_lambda_handlers(deployment), cloud.ssm_runs_on(
            executor=lambda *args: (1, "", "no node"), routable=lambda instance_id: False,
            registered=lambda instance_id: instance_id not in unregistered,
        ) as commands:
            yield MotoAws(deployment, commands, create_network(REGION, "10.250.0.0/24"), unregistered)
    aws.client.cache_clear()
