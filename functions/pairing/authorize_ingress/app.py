"""AuthorizeIngress: the federation's network as planned: its security group on the head node, prefix-list
entries for the other VPCs, the missing least-privilege rules, all tagged as ours."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@leased_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    return pairing.authorize_ingress(client, state.planned(), state.request.execution_name, settings())
