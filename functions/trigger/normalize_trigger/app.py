"""NormalizeTrigger: validate the CloudFormation event, tag change, registry change or manual request that started the
workflow."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import registry
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import logger, tracer
from slurm_multicluster.settings import settings
from slurm_multicluster.triggers import normalize


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # The raw trigger is untrusted: it is parsed (and rejected) by normalize(), never logged as a whole.
    workflow = event.get("workflow", "pairing")
    config = settings()
    request = normalize(event.get("event", {}), event.get("executionName", ""), workflow, config.federation_tag_key,
                        config.deployment_id, lambda name: registry.read(client("ssm", config.deployment_region), name),
                        member_regions=config.member_regions)
    logger.info(f"{workflow} request", extra={"request": request.state()})
    return request.state()
