"""DiscoverFederation: stack -> membership, head nodes, security groups and roles of every federation member."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    found = pairing.discover(client, state.request, settings())
    logger.info(
        "discovered",
        extra={"member": found.member, "reason": found.reason, "members": [m.cluster_name for m in found.members]},
    )
    return found.state()
