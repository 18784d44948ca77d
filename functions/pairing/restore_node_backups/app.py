"""RestoreNodeBackups (compensation): put back every file this execution changed on the member's nodes."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@leased_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    return pairing.restore_backups(client, state.request, state.members, state.plan, settings())
