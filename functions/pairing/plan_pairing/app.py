"""PlanPairing: the exact rules, key install, config lines and restarts; a dryRun stops after this."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    config = pairing.federation_settings(client, state.members[0].federation, settings())  # the registry's overrides
    the_plan = pairing.plan(client, state.request, state.members, config)
    logger.info("pairing plan", extra={"plan": the_plan.state()})
    return the_plan.state()
