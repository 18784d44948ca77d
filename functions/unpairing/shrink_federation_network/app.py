"""ShrinkFederationNetwork: the federation's prefix lists and security groups fit the members that remain."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import unpairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import UnpairingState


@leased_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> dict:
    return unpairing.shrink_federation_network(client, state.departing(), state.remaining, settings())
