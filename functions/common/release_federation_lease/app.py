"""ReleaseFederationLease: give the federation back (on the success and the failure path alike), only if this
execution still holds it with the fencing token it acquired."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import lease
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(lease.LeaseRequest)
def lambda_handler(request: lease.LeaseRequest, context: LambdaContext) -> dict:
    config = settings()
    released = lease.release(
        client("dynamodb", config.deployment_region), config.federation_lease_table, request.federation, request.holder,
        request.fencing_token,
    )
    return {"released": released}
