"""ReadSlurmSettings (one Map item per member): the head node reports its live Slurm settings through SSM."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.aws import client
from slurm_multicluster.models import Member
from slurm_multicluster.settings import settings

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_parser(model=Member)
def lambda_handler(member: Member, context: LambdaContext) -> dict:
    return pairing.read_slurm_settings(client, member, settings()).state()
