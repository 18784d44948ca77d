"""NormalizeTrigger: validate the CloudFormation event, tag change or manual request that started the workflow."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster.lambda_step import logger, tracer
from slurm_multicluster.settings import settings
from slurm_multicluster.triggers import normalize


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # The raw trigger is untrusted: it is parsed (and rejected) by normalize(), never logged as a whole.
    workflow = event.get("workflow", "pairing")
    request = normalize(event.get("event", {}), event.get("executionName", ""), workflow, settings().federation_tag_key)
    logger.info(f"{workflow} request", extra={"request": request.state()})
    return request.state()
