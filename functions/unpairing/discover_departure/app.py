"""DiscoverDeparture: which federation a deleted or opted-out cluster leaves, and its security groups."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import unpairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import UnpairingState


@pairing_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> dict:
    return unpairing.discover_departure(client, state.request, settings()).state()
