"""DiscoverFederation: stack -> membership, head nodes, security groups and roles of every federation member."""

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
    found = pairing.discover(client, state.request, settings())
    logger.info(
        "discovered",
        extra={"member": found.member, "reason": found.reason, "members": [m.cluster_name for m in found.members]},
    )
    return found.state()
