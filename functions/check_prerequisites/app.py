"""CheckPrerequisites: everything that must hold before anything changes, each failure saying what to do."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.state import PairingState

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_parser(model=PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    passed = pairing.check_prerequisites(state.request, state.members)
    logger.info("prerequisites met", extra={"checks": passed})
    return {"passed": passed}
