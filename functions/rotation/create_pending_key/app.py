"""CreatePendingKey: the accounting head node generates the new key and puts it as the secret's AWSPENDING."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.settings import settings


@leased_step(rotation.RotationState)
def lambda_handler(state: rotation.RotationState, context: LambdaContext) -> dict:
    return rotation.create_pending_key(client, state, settings()).state()
