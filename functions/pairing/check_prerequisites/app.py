"""CheckPrerequisites: everything that must hold before anything changes, each failure saying what to do."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    config = pairing.federation_settings(client, state.members[0].federation, settings())  # the registry's overrides
    passed = pairing.check_prerequisites(state.request, state.members, config)
    logger.info("prerequisites met", extra={"checks": passed})
    return {"passed": passed}
