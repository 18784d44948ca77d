"""PlanPairing: the exact rules, key install, config lines and restarts; a dryRun stops after this."""

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
    the_plan = pairing.plan(client, state.request, state.members, settings())
    logger.info("pairing plan", extra={"plan": the_plan.state()})
    return the_plan.state()
