"""ReportRollbackIncomplete: a compensation could not prove it restored what the workflow changed; members may run
different munge keys. Count it in the metric the template's RollbackIncompleteAlarm watches, and say so loudly."""

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict

from slurm_multicluster.lambda_step import logger, pairing_step

metrics = Metrics()  # namespace and service from POWERTOOLS_METRICS_NAMESPACE / POWERTOOLS_SERVICE_NAME
ROLLBACK_INCOMPLETE_METRIC = "RollbackIncomplete"


class Incomplete(BaseModel):
    """What the state machine passes: which workflow, which federation, the error of the failed compensation."""

    model_config = ConfigDict(extra="ignore")
    workflow: str
    federation: str | None = None
    cluster: str | None = None
    error: str = ""


@metrics.log_metrics
@pairing_step(Incomplete)
def lambda_handler(incomplete: Incomplete, context: LambdaContext) -> dict:
    metrics.add_metric(name=ROLLBACK_INCOMPLETE_METRIC, unit=MetricUnit.Count, value=1)
    metrics.add_metadata(key="workflow", value=incomplete.workflow)
    metrics.add_metadata(key="federation", value=incomplete.federation or "")
    logger.error(
        "ROLLBACK INCOMPLETE: the compensation could not restore or prove what this execution changed; members may "
        "run different munge keys (README: 'Alarms')",
        extra={"workflow": incomplete.workflow, "federation": incomplete.federation, "cluster": incomplete.cluster,
               "error": incomplete.error[:200]},
    )
    return {"metric": ROLLBACK_INCOMPLETE_METRIC, "workflow": incomplete.workflow}
