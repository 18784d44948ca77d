"""AuthorizeIngress: add the planned least-privilege rules between head nodes, tagged as ours."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    added = pairing.authorize_ingress(client, state.planned(), state.request.execution_name, settings())
    return {"added": [rule.state() for rule in added]}
