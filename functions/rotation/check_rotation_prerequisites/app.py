"""CheckRotationPrerequisites: one accounting cluster, every member on the federation key, the secret has AWSCURRENT."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.settings import settings


@pairing_step(rotation.RotationState)
def lambda_handler(state: rotation.RotationState, context: LambdaContext) -> dict:
    plan = rotation.check_prerequisites(client, state.request, state.members, settings())
    logger.info("rotation plan", extra={"plan": plan.state()})
    return plan.state()
