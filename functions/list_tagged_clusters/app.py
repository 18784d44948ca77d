"""ListTaggedClusters: every live ParallelCluster stack tagged into a federation (or into the requested one)."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import sweep
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(sweep.SweepState)
def lambda_handler(state: sweep.SweepState, context: LambdaContext) -> dict:
    return sweep.tagged_clusters(client, state.request, settings()).state()
