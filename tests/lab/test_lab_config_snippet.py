"""The config snippet for clusters created later, from a paired federation on real daemons (lab + moto)."""

from __future__ import annotations

import contextlib
import io
import json
import re

import boto3
import pytest
import yaml

from lab import ClusterSpec
from lab.bridge import lab_cloud
from lab_helpers import wait_until
from pairing_helpers import ALPHA_TAGS, BETA_TAGS, FEDERATION, assert_absent, fresh_lab, key_bytes

pytestmark = pytest.mark.lab

SLURMDBD_CONF = "/opt/slurm/etc/slurmdbd.conf"
MOVED_DBD_PORT = 6839  # not slurmdbd's default: the snippet must carry the port slurmdbd really uses


@pytest.fixture(scope="module")
def paired(lab_host):
    with fresh_lab("snippet", "10.250.84.0/24", [ClusterSpec("alpha", accounting=True), ClusterSpec("beta")]) as lab:
        with lab_cloud(lab, {"alpha": ALPHA_TAGS, "beta": BETA_TAGS}) as cloud:
            result = cloud.run(cloud.event_for("beta"))
            assert result["status"] == "SUCCEEDED", result.get("cause")
            yield lab, cloud


def _invoke(cloud, event: dict) -> tuple[dict, str, str]:
    """Invoke the deployed Lambda as `sam remote invoke` does: (response, payload text, the Lambda's log lines)."""
    logs = io.StringIO()
    with contextlib.redirect_stdout(logs):
        response = boto3.client("lambda", region_name=cloud.region).invoke(
            FunctionName=cloud.deployment.functions["GenerateConfigSnippetFunction"], Payload=json.dumps(event))
    return response, response["Payload"].read().decode(), logs.getvalue()


def _dbd_port(lab) -> int:
    conf = lab.exec("alpha-head", ["cat", SLURMDBD_CONF], check=True).stdout
    return int(re.findall(r"^DbdPort=(\d+)\s*$", conf, re.MULTILINE)[-1])


def _listening(lab, port: int) -> bool:
    return lab.exec("alpha-head", ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]).returncode == 0


def test_member_snippet_names_the_federation_key_and_the_port_slurmdbd_listens_on(paired):
    lab, cloud = paired
    # The accounting cluster's slurmdbd moves to another port after the pairing: the snippet reads it live.
    lab.exec("alpha-head", ["sed", "-i", f"s/^DbdPort=.*/DbdPort={MOVED_DBD_PORT}/", SLURMDBD_CONF], check=True)
    lab.systemctl("alpha-head", "restart", "slurmdbd")
    wait_until(lambda: _listening(lab, MOVED_DBD_PORT), 60, f"alpha's slurmdbd listening on {MOVED_DBD_PORT}")
    assert _dbd_port(lab) == MOVED_DBD_PORT

    response, payload, logs = _invoke(cloud, {"federation": FEDERATION, "region": cloud.region})
    assert "FunctionError" not in response, payload
    result = json.loads(payload)
    snippet = yaml.safe_load(result["yaml"])
    assert snippet == result["config"]

    secret = boto3.client("secretsmanager", region_name=cloud.region).describe_secret(
        SecretId=f"slurm-multicluster/default/{FEDERATION}/munge-key")
    settings = snippet["Scheduling"]["SlurmSettings"]
    assert settings["MungeKeySecretArn"] == secret["ARN"]
    assert settings["ExternalSlurmdbd"] == {"Host": lab.head("alpha").ip, "Port": MOVED_DBD_PORT}
    assert "Database" not in settings
    assert snippet["Tags"] == [{"Key": "slurm-multicluster:federation", "Value": FEDERATION}]
    assert snippet["HeadNode"]["Iam"]["AdditionalIamPolicies"] == [
        {"Policy": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}]
    assert "3.10.0" in result["yaml"] and result["minimumParallelclusterVersion"] == "3.10.0"
    for key in {key_bytes(lab, "alpha-head"), key_bytes(lab, "beta-head")}:
        assert_absent(key, payload)
        assert_absent(key, logs)


def test_accounting_snippet_and_hostile_input_through_the_deployed_function(paired):
    lab, cloud = paired
    response, payload, logs = _invoke(cloud, {"federation": FEDERATION, "region": cloud.region, "role": "accounting"})
    assert "FunctionError" not in response, payload
    snippet = yaml.safe_load(json.loads(payload)["yaml"])
    assert set(snippet["Scheduling"]["SlurmSettings"]) == {"MungeKeySecretArn"}
    assert snippet["Tags"] == [{"Key": "slurm-multicluster:federation", "Value": FEDERATION}]  # the registry names the accounting cluster
    assert_absent(key_bytes(lab, "alpha-head"), payload + logs)

    response, payload, _ = _invoke(cloud, {"federation": "hpc; rm -rf /", "region": cloud.region})
    assert response.get("FunctionError") == "Unhandled"
    assert json.loads(payload)["errorType"] == "InvalidInput"
