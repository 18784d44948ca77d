"""DiscoverRemainingMembers: the members that stay in the federation once the departing cluster has left."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import unpairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import UnpairingState


@pairing_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> list:
    return [member.state() for member in unpairing.remaining_members(client, state.departing(), settings())]
