"""Join a running lab to a moto "AWS": the workflow's SSM commands run the real node scripts on lab nodes.

- One moto server, listening on 127.0.0.1 (for this process: the Lambdas, the state machine, the tests) and on
  the lab bridge's address inside the bridge namespace (for node scripts calling `aws secretsmanager ...` with
  their "instance role", as a head node does). Both sockets serve the same in-process moto backends.
- Every lab cluster is mirrored in moto as a ParallelCluster stack with tagged head and compute instances whose
  private IPs are the lab nodes' addresses.
- The template is deployed as `sam deploy` would, with the real handlers run in-process (lab/cloud.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import requests

from lab import cloud
from lab.core import Lab
from lab.parallelcluster import (FEDERATION_TAG, ClusterInAws, admit_cluster, create_cluster, create_network,
                                 launch_compute_node, terminate_node)

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@dataclass
class LabCloud:
    """The lab as seen from "AWS": deployment, the mirrored clusters and every SSM command sent."""

    lab: Lab
    deployment: cloud.Deployment
    clusters: dict[str, ClusterInAws]
    commands: list[dict[str, Any]]
    endpoint: str
    node_of_instance: dict[str, str] = field(default_factory=dict)
    # called with (lab node, command) right before the SSM stand-in runs a command there: a test's way to make
    # something happen on the cluster at an exact point of a workflow (it must not raise)
    before_command: Callable[[str, cloud.RunCommand], None] | None = None

    @property
    def region(self) -> str:
        return self.deployment.region

    def event_for(self, cluster: str, status: str = "CREATE_COMPLETE", event_id: str | None = None) -> dict[str, Any]:
        mirror = self.clusters[cluster]
        return cloud.stack_status_event(mirror.stack_id, status, mirror.region, event_id)

    def run(self, execution_input: dict[str, Any], *, on_event=None, timeout: float = 600, routed: bool = True) -> dict[str, Any]:
        """Start the state machine (through the EventBridge rule for events) and wait for the outcome."""
        if routed and "detail-type" in execution_input:
            arn = cloud.route_event(self.deployment, execution_input)
            if arn is None:
                raise AssertionError("no EventBridge rule of the template matches this event")
        else:
            arn = cloud.start_execution(self.deployment, execution_input)
        return cloud.wait_for_execution(arn, self.region, timeout=timeout, on_event=on_event)

    def opt_in(self, cluster: str, tags: dict[str, str], *, admit: bool = True) -> None:
        """An existing cluster asks to join: its stack gets ``tags`` (an update keeps every resource); with ``admit``
        an administrator also admits it by its StackId in the registry, as README "Security model" says."""
        import boto3

        cloudformation = boto3.client("cloudformation", region_name=self.clusters[cluster].region)
        current = cloudformation.describe_stacks(StackName=self.clusters[cluster].stack_id)["Stacks"][0]["Tags"]
        cloudformation.update_stack(StackName=self.clusters[cluster].stack_id, UsePreviousTemplate=True,
                                    Tags=[*current, *({"Key": k, "Value": v} for k, v in tags.items())])
        if admit:
            admit_cluster(self.region, tags[FEDERATION_TAG], self.clusters[cluster].stack_id)

    def launch_compute_node(self, node: str) -> str:
        """ParallelCluster launches an instance for lab compute node ``node`` (at the node's address); SSM reaches
        the node through it from now on. Its instance id. The node's daemons are the caller's."""
        lab_node = self.lab.node(node)
        instance_id = launch_compute_node(self.clusters[lab_node.cluster], lab_node.ip)
        self.node_of_instance[instance_id] = node
        return instance_id

    def terminate_node(self, node: str) -> str:
        """ParallelCluster terminates the running instance of lab compute node ``node``; its instance id. The node's
        daemons are the caller's."""
        mirror = self.clusters[self.lab.node(node).cluster]
        (instance_id,) = [i for i in mirror.compute_instance_ids if self.node_of_instance.get(i) == node]
        terminate_node(mirror, instance_id)
        return instance_id

    def rotate(self, federation: str, *, on_event=None, timeout: float = 600) -> dict[str, Any]:
        """Run the munge key rotation of ``federation`` as `sam remote invoke` with events/manual-rotate.json does."""
        arn = cloud.start_execution(self.deployment, {"federation": federation, "region": self.region},
                                    cloud.ROTATION_STATE_MACHINE)
        return cloud.wait_for_execution(arn, self.region, timeout=timeout, on_event=on_event)

    def unpair(self, stack_name: str, *, timeout: float = 600, **options: Any) -> dict[str, Any]:
        """Unpair a cluster by hand, as `sam remote invoke` with events/manual-unpair.json does."""
        arn = cloud.start_execution(self.deployment, {"stackName": stack_name, "region": self.region, **options},
                                    cloud.UNPAIRING_STATE_MACHINE)
        return cloud.wait_for_execution(arn, self.region, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _moto_server(lab: Lab) -> Iterator[str]:
    """moto on 127.0.0.1:PORT and on <bridge ip>:PORT in the lab's bridge namespace; yields the local endpoint."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # otherwise one line per moto request
    port = _free_port()
    local = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    local.start()
    servers: list[Any] = []
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve_in_bridge_namespace() -> None:
        try:
            # setns affects only this thread: the listening socket is created inside the lab's bridge namespace.
            with open(lab.netns_path("bridge")) as namespace:
                os.setns(namespace.fileno(), os.CLONE_NEWNET)
            server = make_server(lab.bridge_ip, port, DomainDispatcherApplication(create_backend_app), True,
                                 request_handler=MotoRequestHandler)
            servers.append(server)
        except BaseException as error:  # reported to the caller below
            failure.append(error)
            return
        finally:
            ready.set()
        server.serve_forever()

    thread = threading.Thread(target=serve_in_bridge_namespace, name="moto-bridge", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    try:
        if failure or not servers:
            raise RuntimeError(f"cannot serve moto inside the lab bridge namespace: {failure}")
        yield f"http://127.0.0.1:{port}"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()  # its socket would keep the bridge namespace alive after `down` deletes it
        local.stop()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def node_environment(lab: Lab, port: int, region: str) -> dict[str, str]:
    """What a lab node's `aws` CLI sees: the moto endpoint on the bridge, fake instance-role credentials."""
    return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{lab.bridge_ip}:{port}", "AWS_DEFAULT_REGION": region}


@contextmanager
def lab_cloud(
    lab: Lab,
    tags: dict[str, dict[str, str]],
    *,
    region: str = "us-east-1",
    cluster_regions: dict[str, str] | None = None,
    parameters: dict[str, str] | None = None,
    admit: dict[str, str | None] | None = None,
) -> Iterator[LabCloud]:
    """moto + the deployed template + the lab's clusters mirrored with ``tags`` (cluster -> stack tags).

    ``admit`` (cluster -> "accounting" | "member" | None) is what the administrator writes in the registry for
    each cluster; a cluster not named there is admitted as its tags say (lab.parallelcluster.create_cluster's
    "auto": every tagged cluster admitted, the one with the lab's accounting marker as the accounting cluster).
    """
    from slurm_multicluster import aws

    with ExitStack() as stack:
        endpoint = stack.enter_context(_moto_server(lab))
        port = int(endpoint.rsplit(":", 1)[1])
        stack.enter_context(_environment({
            **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "MOTO_PORT": str(port), "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region, "POWERTOOLS_TRACE_DISABLED": "true",
        }))
        aws.client.cache_clear()
        stack.callback(aws.client.cache_clear)
        requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()  # backends are per process
        requests.post(f"{endpoint}/moto-api/config", json=cloud.MOTO_CONFIG, timeout=10).raise_for_status()
        extra_regions = sorted({r for r in (cluster_regions or {}).values() if r != region})
        deployment = cloud.deploy(region, {"FederationRegions": ",".join(extra_regions), **(parameters or {})})

        networks: dict[str, Any] = {}
        clusters: dict[str, ClusterInAws] = {}
        node_of_instance: dict[str, str] = {}
        for spec in lab.clusters:
            cluster_region = (cluster_regions or {}).get(spec.name, region)
            if cluster_region not in networks:
                networks[cluster_region] = create_network(cluster_region, lab.subnet)
            head = lab.head(spec.name)
            computes = [n for n in lab.computes(spec.name) if lab.is_booted(n.name)]
            logins = lab.logins(spec.name)
            mirror = create_cluster(networks[cluster_region], spec.name, head.ip, [n.ip for n in computes],
                                    tags.get(spec.name), login_ips=[n.ip for n in logins],
                                    admit=(admit or {}).get(spec.name, "auto"), registry_region=region)
            clusters[spec.name] = mirror
            node_of_instance[mirror.head_instance_id] = head.name
            node_of_instance.update(zip(mirror.compute_instance_ids, (n.name for n in computes)))
            node_of_instance.update(zip(mirror.login_instance_ids, (n.name for n in logins)))

        def execute(command: cloud.RunCommand) -> tuple[int, str, str]:
            if seen_from_aws.before_command is not None:
                seen_from_aws.before_command(node_of_instance[command.instance_id], command)
            # the document's rendered text, run with sh on the node as the SSM agent runs it
            done = lab.sh(node_of_instance[command.instance_id], command.text,
                          env=node_environment(lab, port, command.region), timeout=command.timeout,
                          cancel=command.cancelled)
            return done.returncode, done.stdout, done.stderr

        stack.enter_context(cloud.real_lambda_handlers(deployment))
        commands = stack.enter_context(cloud.ssm_runs_on(execute, routable=lambda i: i in node_of_instance))
        seen_from_aws = LabCloud(lab, deployment, clusters, commands, endpoint, node_of_instance)
        yield seen_from_aws

