"""VerifyPairing: accounting lists both, submissions work both ways, munge keys agree, nodes are up."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing
from slurm_multicluster.aws import client
from slurm_multicluster.settings import settings
from slurm_multicluster.state import PairingState

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    assert state.plan is not None
    metrics.add_dimension(name="Federation", value=state.plan.federation)
    try:
        checks = pairing.verify(client, state.plan, state.members, settings())
    except Exception:
        metrics.add_metric(name="PairingVerificationFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="PairingVerified", unit=MetricUnit.Count, value=1)
    return checks
