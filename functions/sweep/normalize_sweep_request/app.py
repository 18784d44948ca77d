"""NormalizeSweepRequest: validate the scheduled or manual drift sweep request."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import sweep
from slurm_multicluster.lambda_step import logger, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # The raw input is untrusted: it is parsed (and rejected) by normalize(), never logged as a whole.
    request = sweep.normalize(event.get("input"), event.get("executionName", ""))
    logger.info("sweep request", extra={"request": request.state()})
    return request.state()
