"""StartPairingRun: start the pairing state machine on one cluster (dryRun as the sweep's), or the unpairing state
machine on a departed one."""

import os

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import sweep
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import pairing_step


@pairing_step(sweep.PairingRun)
def lambda_handler(run: sweep.PairingRun, context: LambdaContext) -> dict:
    arn = os.environ["PAIRING_STATE_MACHINE_ARN" if run.cluster.workflow == "pairing" else "UNPAIRING_STATE_MACHINE_ARN"]
    return sweep.start_pairing_run(client("stepfunctions", arn.split(":")[3]), arn, run).state()
