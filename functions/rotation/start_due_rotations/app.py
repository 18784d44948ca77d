"""StartDueRotations: the daily check; rotate every federation whose key is older than its registry rotationDays."""

import datetime
import os

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import logger, tracer
from slurm_multicluster.settings import settings


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    arn = os.environ["ROTATION_STATE_MACHINE_ARN"]
    now = datetime.datetime.now(datetime.timezone.utc)
    sfn = client("stepfunctions", arn.split(":")[3])
    ages = rotation.key_ages(client, settings(), now)
    for age in ages:  # the dashboard's "munge key age" (one metric per federation, daily)
        with single_metric(name=rotation.KEY_AGE_METRIC, unit=MetricUnit.NoUnit, value=age["keyAgeDays"]) as metric:
            metric.add_dimension(name="federation", value=age["federation"])
    started = [
        {**due, "execution": rotation.start_rotation(sfn, arn, due["federation"], due["region"], "schedule",
                                                     rotation.scheduled_execution_name(due["federation"], now))}
        for due in rotation.rotations_due(client, settings(), now, ages)
    ]
    return {"started": started}
