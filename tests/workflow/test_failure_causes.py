"""What a failed workflow tells the person paged for it: the error's name and the step's own message, in the event
and in the execution's cause; never the Lambda error payload around it (its JSON, its stack trace). A cause that
is not a Lambda's (a Task's States.Timeout) is passed on as it came (tests/workflow/test_time_limits.py)."""

from __future__ import annotations

import re

from lab import cloud
from workflow.conftest import REGION
from workflow.test_pairing_secret import pairing_aws  # noqa: F401 (the fixture)
from workflow.test_rotation_protocol import rotation_aws  # noqa: F401 (the fixture)

LAMBDA_PAYLOAD = ("errorMessage", "errorType", "stackTrace", 'File "', "Traceback", "{")


def assert_readable(cause: str, message: str) -> None:
    assert re.match(r"^[A-Za-z]+: ", cause), cause
    assert message in cause
    assert not [marker for marker in LAMBDA_PAYLOAD if marker in cause], cause


def test_a_failed_pairing_says_what_failed_without_the_lambda_error_payload(pairing_aws):  # noqa: F811
    queue = cloud.events_queue(REGION)
    pairing_aws.nodes.fail[("beta-head", "verify-member.sh")] = "sbatch --clusters=alpha --test-only fails"

    result = pairing_aws.pair("beta")

    assert (result["status"], result["error"]) == ("FAILED", "VerifyPairingFailed")
    assert_readable(result["cause"], "sbatch --clusters=alpha --test-only fails")
    [failed] = [e["detail"] for e in cloud.published(queue, REGION) if e["detail-type"] == "Slurm Cluster Pairing Failed"]
    assert (failed["error"], failed["cause"], failed["outcome"]) == ("VerifyPairingFailed", result["cause"], "rolled back")


def test_a_failed_rotation_says_what_failed_without_the_lambda_error_payload(rotation_aws):  # noqa: F811
    queue = cloud.events_queue(REGION)
    rotation_aws.federation.fail[("gamma-head", "install-munge-key.sh")] = "slurmctld did not come back after the key change"

    result = rotation_aws.rotate()

    assert (result["status"], result["error"]) == ("FAILED", "SwitchMembersFailed")
    assert_readable(result["cause"], "slurmctld did not come back after the key change")
    [failed] = [e["detail"] for e in cloud.published(queue, REGION)
                if e["detail-type"] == "Slurm Munge Key Rotation Failed"]
    assert (failed["error"], failed["cause"]) == ("SwitchMembersFailed", result["cause"])
