"""DiscoverFederationMembers: every member of the federation, with its head, compute and login nodes; the admitted
stacks left out are announced ("Slurm Cluster Skipped", MembersSkipped) and the rotation goes on without them."""

import os

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import discovery, limits, rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(rotation.RotationState)
def lambda_handler(state: rotation.RotationState, context: LambdaContext) -> dict:
    config = settings()
    members, skipped = rotation.discover_members(client, state.request, config)
    limits.require_at_most(len(members), limits.MAX_FEDERATION_MEMBERS, f"members of {state.request.federation}",
                           "split the federation")
    discovery.announce_skipped(client("events", config.deployment_region), os.environ.get("EVENT_BUS_NAME", "default"),
                               state.request.federation, skipped, "rotation", state.request.execution_name)
    return {"members": [m.state() for m in members], "skipped": [s.state() for s in skipped]}
