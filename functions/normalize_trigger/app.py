"""NormalizeTrigger: validate the CloudFormation event or manual request that started the workflow."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster.triggers import normalize

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    request = normalize(event.get("event", {}), event.get("executionName", ""))
    logger.info("pairing request", extra={"request": request.state()})
    return request.state()
