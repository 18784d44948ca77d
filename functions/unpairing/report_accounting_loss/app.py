"""ReportAccountingLoss: the accounting cluster is being deleted; count it in the metric the template's alarm watches."""

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.state import UnpairingState
from slurm_multicluster.unpairing import ACCOUNTING_LOST_METRIC

metrics = Metrics()  # namespace and service from POWERTOOLS_METRICS_NAMESPACE / POWERTOOLS_SERVICE_NAME


@metrics.log_metrics
@pairing_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> dict:
    departure = state.departing()
    metrics.add_metric(name=ACCOUNTING_LOST_METRIC, unit=MetricUnit.Count, value=1)
    metrics.add_metadata(key="federation", value=departure.federation)
    metrics.add_metadata(key="cluster", value=departure.cluster_name)
    logger.error(
        "the federation's accounting cluster is being deleted: every member loses accounting until a new "
        "accounting cluster is paired (README: 'When the accounting cluster is deleted')",
        extra={"federation": departure.federation, "cluster": departure.cluster_name},
    )
    return {"metric": ACCOUNTING_LOST_METRIC, "federation": departure.federation, "cluster": departure.cluster_name}
