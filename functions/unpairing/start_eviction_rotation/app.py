"""RotateRemainingMembers: a revoked member left; rotate the remaining members to a key it never saw."""

import os

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step
from slurm_multicluster.state import UnpairingState


@pairing_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> dict:
    departure = state.departing()
    assert departure.federation
    arn = os.environ["ROTATION_STATE_MACHINE_ARN"]
    name = f"evict-{state.request.execution_name}"[:80]
    return {"rotationExecution": rotation.start_rotation(client("stepfunctions", arn.split(":")[3]), arn,
                                                         departure.federation, departure.region, "eviction", name)}
