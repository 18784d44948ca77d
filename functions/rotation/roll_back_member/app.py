"""RollBackMember (compensation, one Map item per member): back to the key that was current, daemons restarted."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.settings import settings


@leased_step(rotation.MemberStep)
def lambda_handler(step: rotation.MemberStep, context: LambdaContext) -> dict:
    return rotation.roll_back_member(client, step, settings()).state()
