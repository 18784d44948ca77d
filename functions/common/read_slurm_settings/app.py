"""ReadSlurmSettings (one Map item per member): the head node reports its live Slurm settings through SSM."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.aws import client
from slurm_multicluster.models import Member
from slurm_multicluster.settings import settings


@pairing_step(Member)
def lambda_handler(member: Member, context: LambdaContext) -> dict:
    return pairing.read_slurm_settings(client, member, settings()).state()
