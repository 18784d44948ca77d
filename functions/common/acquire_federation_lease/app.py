"""AcquireFederationLease: one workflow at a time per federation; refuse (FederationBusy) while another runs."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import lease
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(lease.LeaseRequest)
def lambda_handler(request: lease.LeaseRequest, context: LambdaContext) -> dict:
    config = settings()
    held = lease.acquire(
        client("dynamodb", config.deployment_region), config.federation_lease_table, request.federation,
        request.holder, request.workflow, config.federation_lease_seconds,
    )
    return held.state()
