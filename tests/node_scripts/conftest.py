"""Fixtures for the node-script tests: head-node trees (node_fixture.Node) and a moto Secrets Manager.

Secrets Manager is a real moto server reached by the real `aws` CLI; daemons are stand-ins except munged.
"""

from __future__ import annotations

import shutil
import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer

from node_fixture import REGION, Node, node_root


@pytest.fixture
def make_node(aws_env):
    """Build head-node trees on demand: make_node(pc_conf=..., key=...)."""
    nodes: list[Node] = []

    def make(**kwargs) -> Node:
        node = Node(node_root(), aws_env)
        nodes.append(node)
        return node.build(**kwargs)

    yield make
    for node in nodes:
        node.stop_munged()
        shutil.rmtree(node.root, ignore_errors=True)


@pytest.fixture
def node(make_node) -> Node:
    """A head node whose slurm_parallelcluster.conf sets accounting to its own slurmdbd."""
    return make_node()


# ---------------------------------------------------------------- Secrets Manager (moto)


@pytest.fixture(scope="session")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint, tmp_path) -> dict[str, str]:
    """Environment for the real aws CLI to reach moto (and no real account)."""
    return {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def secrets(moto_endpoint):
    return boto3.client(
        "secretsmanager",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def secret_name(secrets) -> str:
    """A new, empty federation secret (no versions), as the SyncMungeKey Lambda creates it."""
    name = f"slurm-multicluster/f-{uuid.uuid4().hex[:8]}/munge-key"
    secrets.create_secret(Name=name, Description="federation munge key")
    return name
