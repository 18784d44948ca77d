"""RevokeDepartedReaders (sweep, without dryRun): the federation secrets stop letting read the munge key any role that
no admitted, tagged member's head node has."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import sweep
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(sweep.SweepState)
def lambda_handler(state: sweep.SweepState, context: LambdaContext) -> list:
    return [found.state() for found in sweep.revoke_departed_readers(client, state.request, settings())]
