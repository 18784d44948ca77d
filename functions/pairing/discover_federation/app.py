"""DiscoverFederation: stack -> membership (tag asks, registry admits), head nodes, security groups and roles of every
admitted federation member; the admitted peers left out are announced ("Slurm Cluster Skipped", MembersSkipped)."""

import os

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import discovery, limits, pairing
from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState

metrics = Metrics()  # namespace and service from POWERTOOLS_METRICS_NAMESPACE / POWERTOOLS_SERVICE_NAME


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    config = settings()
    found = pairing.discover(client, state.request, config)
    limits.require_at_most(len(found.members), limits.MAX_FEDERATION_MEMBERS, f"members of {found.federation}",
                           "split the federation")
    if found.not_admitted:  # an administrator may want to admit it: count it where an alarm can see it
        metrics.add_metric(name=pairing.NOT_ADMITTED_METRIC, unit=MetricUnit.Count, value=1)
        metrics.add_metadata(key="stack", value=found.stack_id or found.cluster_name)
        metrics.flush_metrics()  # only then: most discoveries count nothing (no empty-metrics warning)
    discovery.announce_skipped(client("events", config.deployment_region), os.environ.get("EVENT_BUS_NAME", "default"),
                               found.federation, found.skipped, "pairing", state.request.execution_name)
    logger.info(
        "discovered",
        extra={"member": found.member, "reason": found.reason, "members": [m.cluster_name for m in found.members]},
    )
    return found.state()
