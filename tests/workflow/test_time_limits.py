"""A step that waits on nodes longer than its TimeoutSeconds ends in States.Timeout, which the pairing's Catch turns
into the same compensation as any other failure (real ASL in moto, real Lambdas in-process, nodes simulated); the
Lambda left behind gives up before its own timeout and cancels the command it was waiting on."""

from __future__ import annotations

import json
import threading
import time

import boto3
import pytest

from lab import cloud
from slurm_multicluster import lease
from workflow.conftest import REGION
from workflow.test_pairing_secret import FEDERATION, pairing_aws  # noqa: F401 (the fixture)

STUCK_TASK_SECONDS = 2  # VerifyPairing's TimeoutSeconds in this test (the template's is its Lambda's 900 s)
STUCK_LAMBDA_SECONDS = 20  # the VerifyPairing Lambda's Timeout here: it gives up 15 s (the safety margin) before


@pytest.fixture
def verification_never_ends(pairing_aws):  # noqa: F811
    """beta's head node never finishes verify-member.sh (until the test ends); VerifyPairing's TimeoutSeconds and
    its Lambda's Timeout are short."""
    nodes, release = pairing_aws.nodes, threading.Event()
    verify = nodes._verify_member

    def stuck_on_beta(node, args):
        if node.name == "beta-head":
            release.wait(120)
        return verify(node, args)

    nodes._verify_member = stuck_on_beta  # the simulator dispatches on the script's name (simulated_nodes.execute)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = pairing_aws.deployment.state_machines["PairingStateMachine"]
    definition = json.loads(sfn.describe_state_machine(stateMachineArn=arn)["definition"])
    definition["States"]["VerifyPairing"]["TimeoutSeconds"] = STUCK_TASK_SECONDS
    sfn.update_state_machine(stateMachineArn=arn, definition=json.dumps(definition))
    boto3.client("lambda", region_name=REGION).update_function_configuration(
        FunctionName=pairing_aws.deployment.functions["VerifyPairingFunction"], Timeout=STUCK_LAMBDA_SECONDS)
    yield pairing_aws
    release.set()


def test_a_verification_that_times_out_rolls_the_pairing_back_and_releases_the_lease(verification_never_ends):
    aws = verification_never_ends
    beta_sha = aws.nodes.head("beta").key_sha

    result = aws.pair("beta")

    assert (result["status"], result["error"]) == ("FAILED", "VerifyPairingFailed")
    assert result["cause"].startswith("States.Timeout")
    states = cloud.state_names(result["executionArn"], REGION)
    assert (states.index("VerifyPairing") < states.index("RestoreNodeBackups") < states.index("RevokeAddedIngress")
            < states.index("RestoreSecretAccess") < states.index("ReleaseFederationLease")
            < states.index("PublishPairingFailed"))
    assert aws.nodes.head("beta").key_sha == beta_sha  # its nodes are rolled back
    assert lease.holder_of(boto3.client("dynamodb", region_name=REGION), _lease_table(aws), FEDERATION) is None


def test_the_lambda_left_waiting_gives_up_before_its_timeout_and_cancels_the_command(verification_never_ends):
    aws = verification_never_ends

    assert aws.pair("beta")["status"] == "FAILED"

    ssm, head = boto3.client("ssm", region_name=REGION), aws.clusters["beta"].head_instance_id
    (stuck,) = [c["CommandId"] for c in ssm.list_commands(InstanceId=head)["Commands"]
                if c["DocumentName"].endswith("-VerifyMember")]
    deadline = time.monotonic() + STUCK_LAMBDA_SECONDS + 10
    status = ssm.get_command_invocation(CommandId=stuck, InstanceId=head)["Status"]
    while status == "InProgress" and time.monotonic() < deadline:  # the Lambda gives up 15 s before its 20 s
        time.sleep(0.2)
        status = ssm.get_command_invocation(CommandId=stuck, InstanceId=head)["Status"]
    assert status == "Cancelled"


def _lease_table(aws) -> str:
    env = boto3.client("lambda", region_name=REGION).get_function_configuration(
        FunctionName=aws.deployment.functions["AcquireFederationLeaseFunction"])["Environment"]["Variables"]
    return env["FEDERATION_LEASE_TABLE"]
