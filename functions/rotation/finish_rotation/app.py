"""FinishRotation: AWSPENDING becomes AWSCURRENT; the old key becomes AWSPREVIOUS."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step


@leased_step(rotation.RotationState)
def lambda_handler(state: rotation.RotationState, context: LambdaContext) -> dict:
    return rotation.finish(client, state)
