"""ListTaggedClusters: every live ParallelCluster stack tagged into a federation (or into the requested one)."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import limits, sweep
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(sweep.SweepState)
def lambda_handler(state: sweep.SweepState, context: LambdaContext) -> dict:
    tagged = sweep.tagged_clusters(client, state.request, settings())
    limits.require_at_most(len(tagged.clusters), limits.MAX_SWEEP_CLUSTERS, "tagged clusters to sweep",
                           "sweep one federation at a time (the request's federation)")
    return tagged.state()
