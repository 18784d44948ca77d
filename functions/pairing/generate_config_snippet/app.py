"""GenerateConfigSnippet: ParallelCluster config that makes a new cluster a federation member from its creation.

Read-only. `sam remote invoke GenerateConfigSnippetFunction --event-file events/config-snippet.json` prints the
commented YAML (`yaml`) and the same as data (`config`).
"""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import config_snippet, pairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(config_snippet.SnippetRequest)
def lambda_handler(request: config_snippet.SnippetRequest, context: LambdaContext) -> dict:
    config = pairing.federation_settings(client, request.federation, settings())  # the registry's overrides
    return config_snippet.generate(client, request, config).state()
