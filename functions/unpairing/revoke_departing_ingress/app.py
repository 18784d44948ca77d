"""RevokeDepartingIngress: revoke every rule of ours that sits on, references or names the departing cluster."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import unpairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import logger, leased_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import UnpairingState


@leased_step(UnpairingState, runs_before_lease=True)  # RevokeDepartingIngress runs before the lease
def lambda_handler(state: UnpairingState, context: LambdaContext) -> dict:
    revoked = unpairing.revoke_departing_ingress(client, state.departing(), settings())
    logger.info("revoked the departing cluster's rules", extra={"count": len(revoked)})
    return {"revoked": [rule.state() for rule in revoked]}
