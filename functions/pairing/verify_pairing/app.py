"""VerifyPairing: accounting lists both, submissions work both ways, munge keys agree, nodes are up."""

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState

metrics = Metrics()


@metrics.log_metrics
@leased_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    plan = state.planned()
    metrics.add_dimension(name="Federation", value=plan.federation)
    try:
        checks = pairing.verify(client, plan, state.members, settings())
    except Exception:
        metrics.add_metric(name="PairingVerificationFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="PairingVerified", unit=MetricUnit.Count, value=1)
    return checks
