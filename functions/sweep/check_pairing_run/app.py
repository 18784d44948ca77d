"""CheckPairingRun: is the cluster's pairing run still running; if not, its plan or its error."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import sweep
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step


@pairing_step(sweep.PairingRun)
def lambda_handler(run: sweep.PairingRun, context: LambdaContext) -> dict:
    return sweep.check_pairing_run(client("stepfunctions", run.execution_arn.split(":")[3]), run)
