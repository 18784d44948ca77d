"""ConfirmEveryMemberStaged / ConfirmEveryMemberSwitched: fail naming every member whose Map item failed."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import rotation
from slurm_multicluster.lambda_step import pairing_step


@pairing_step(rotation.OutcomesCheck)
def lambda_handler(check: rotation.OutcomesCheck, context: LambdaContext) -> dict:
    return {"members": rotation.confirm_outcomes(check)}
