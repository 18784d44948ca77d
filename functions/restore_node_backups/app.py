"""RestoreNodeBackups (compensation): put back every file this execution changed on the member's nodes."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_parser(model=PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    return pairing.restore_backups(client, state.request, state.members, settings())
