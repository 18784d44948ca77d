"""RevokeAddedIngress (compensation): revoke every security group rule this execution added."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.aws import client
from slurm_multicluster.state import PairingState


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    revoked = pairing.revoke_added_ingress(client, state.request, state.members)
    return {"revoked": [rule.state() for rule in revoked]}
