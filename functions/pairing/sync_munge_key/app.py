"""SyncMungeKey: federation secret from the accounting cluster's key; install it on the new member's nodes."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@leased_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    return pairing.sync_munge_key(client, state.planned(), state.members, state.request.execution_name, settings(),
                                  state.skipped)
