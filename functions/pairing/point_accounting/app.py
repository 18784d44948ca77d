"""PointAccountingAtFederation: the new member's slurmctld uses the federation's slurmdbd."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@leased_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    return pairing.point_accounting(client, state.planned(), state.members, state.request.execution_name, settings())
