"""PublishSweepReport: the drift report as one event and as metrics (Powertools EMF, read by CloudWatch)."""

import os

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import sweep
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import logger, pairing_step

metrics = Metrics()  # namespace from POWERTOOLS_METRICS_NAMESPACE


@metrics.log_metrics
@pairing_step(sweep.ReportInput)
def lambda_handler(given: sweep.ReportInput, context: LambdaContext) -> dict:
    report = sweep.report(given)
    metrics.add_metric(name="DriftedClusters", unit=MetricUnit.Count, value=len(report.drifted))
    metrics.add_metric(name="RepairedClusters", unit=MetricUnit.Count, value=len(report.repaired))
    metrics.add_metric(name="FailedRepairs", unit=MetricUnit.Count, value=len(report.failed))
    metrics.add_metric(name="DepartedClusters", unit=MetricUnit.Count, value=len(report.departed))
    for federation, count in sorted(report.members.items()):  # the dashboard's "members per federation"
        with single_metric(name=sweep.MEMBERS_METRIC, unit=MetricUnit.Count, value=count) as metric:
            metric.add_dimension(name="federation", value=federation)
    sweep.publish(client("events", os.environ["AWS_REGION"]), os.environ.get("EVENT_BUS_NAME", "default"), report,
                  given.request.execution_name)
    logger.info("drift report", extra={"report": report.state()})
    return report.state()
