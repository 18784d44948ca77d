"""DiscoverRemainingMembers: the members that stay in the federation once the departing cluster has left, with the
Slurm settings their head nodes report (their queues' subnets, for ShrinkFederationNetwork); the
admitted stacks left out are announced ("Slurm Cluster Skipped", MembersSkipped), never a reason to stop."""

import os

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import discovery, unpairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import UnpairingState


@pairing_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> list:
    config = settings()
    departure = state.departing()
    members, skipped = unpairing.remaining_members(client, departure, config)
    discovery.announce_skipped(client("events", config.deployment_region), os.environ.get("EVENT_BUS_NAME", "default"),
                               departure.federation, skipped, "unpairing", state.request.execution_name)
    return [member.state() for member in members]
