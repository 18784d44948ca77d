"""DiscoverFederationMembers: every member of the federation, with its head, compute and login nodes."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import limits, rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.settings import settings


@pairing_step(rotation.RotationState)
def lambda_handler(state: rotation.RotationState, context: LambdaContext) -> dict:
    members = rotation.discover_members(client, state.request, settings())
    limits.require_at_most(len(members), limits.MAX_FEDERATION_MEMBERS, f"members of {state.request.federation}",
                           "split the federation")
    return {"members": [m.state() for m in members]}
