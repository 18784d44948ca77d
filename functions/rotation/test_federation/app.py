"""TestFederation / TestFederationOnPreviousKey: every member runs the expected key and works with every peer."""

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.settings import settings

metrics = Metrics()


@metrics.log_metrics
@leased_step(rotation.FederationCheck)
def lambda_handler(check: rotation.FederationCheck, context: LambdaContext) -> dict:
    metrics.add_dimension(name="Federation", value=check.request.federation)
    try:
        checks = rotation.verify_federation(client, check, settings())
    except Exception:
        metrics.add_metric(name="FederationTestFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="FederationTestPassed", unit=MetricUnit.Count, value=1)
    return checks
