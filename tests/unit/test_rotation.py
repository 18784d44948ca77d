"""The rotation's plain functions: request validation, prerequisites, Map outcomes (the workflow is in tests/workflow)."""

from __future__ import annotations

import base64
import os

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import rotation
from slurm_multicluster.errors import InvalidInput, PrerequisiteFailed
from slurm_multicluster.models import HeadNode, Member, SlurmSettings
from slurm_multicluster.settings import Settings

ARN = "arn:aws:states:us-east-1:123456789012:execution:slurm-multicluster-RotationStateMachine:{}"


def test_a_manual_request_gets_a_version_id_derived_from_its_execution():
    first = rotation.normalize({"federation": "hpc", "region": "us-east-1"}, "e1", ARN.format("e1"))
    again = rotation.normalize({"federation": "hpc", "region": "us-east-1"}, "e1", ARN.format("e1"))
    other = rotation.normalize({"federation": "hpc", "region": "us-east-1"}, "e2", ARN.format("e2"))
    assert first.trigger == "manual" and first.version_id == again.version_id != other.version_id
    assert 32 <= len(first.version_id) <= 64  # a valid ClientRequestToken


def test_the_scheduled_request_says_so():
    request = rotation.normalize({"federation": "hpc", "region": "eu-west-1", "trigger": "schedule"}, "e1", ARN.format("e1"))
    assert request.trigger == "schedule" and request.region == "eu-west-1"


@pytest.mark.parametrize("given", [
    None, [], "hpc", {"federation": "hpc"}, {"federation": "", "region": "us-east-1"},
    {"federation": "a/b", "region": "us-east-1"}, {"federation": "hpc", "region": "mars"},
    {"federation": "hpc", "region": "us-east-1", "trigger": "$(id)"},
    {"federation": "hpc", "region": "us-east-1", "secret": "x"},
])
def test_malformed_requests_are_refused_without_echoing_them(given):
    with pytest.raises(InvalidInput) as refused:
        rotation.normalize(given, "e1", ARN.format("e1"))
    assert "$(id)" not in str(refused.value)


def test_a_request_from_outside_a_state_machine_execution_is_refused():
    with pytest.raises(InvalidInput, match="execution id"):
        rotation.normalize({"federation": "hpc", "region": "us-east-1"}, "e1", "not-an-arn")


# ---------------------------------------------------------------- prerequisites


def _member(name, accounting=False, sha="a" * 64, ctld=True, dbd=True):
    return Member(
        cluster_name=name, stack_id=f"arn:{name}", region="us-east-1", federation="hpc", is_accounting=accounting,
        head_node=HeadNode(instance_id="i-0123456789abcdef0", private_ip="10.0.0.1",
                           security_group_ids=["sg-0123456789abcdef0"], vpc_id="vpc-1"),
        slurm=SlurmSettings(cluster_name=name, slurmctld_port="6820-6829", slurm_version="22.05.8",
                            slurmdbd_active=accounting and dbd, slurmctld_active=ctld, munge_key_sha256=sha),
    )


@pytest.fixture
def secrets(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


REQUEST = rotation.RotationRequest(federation="hpc", region="us-east-1", trigger="manual", execution_name="e1",
                                   version_id="0" * 36)
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
CONFIG = Settings(munge_key_kms_key_arn=KEY_ARN)  # the template's MungeKeyEncryptionKey
SECRET = "slurm-multicluster/default/hpc/munge-key"


def _our_secret(secrets, value: str) -> None:
    """The federation secret as a pairing of this deployment creates it (its tag and its KMS key)."""
    secrets.create_secret(Name=SECRET, SecretString=value, KmsKeyId=KEY_ARN,
                          Tags=[{"Key": "slurm-multicluster:deployment", "Value": "default"}])


def test_a_paired_federation_is_ready_to_rotate(secrets):
    _our_secret(secrets, base64.b64encode(os.urandom(64)).decode())
    plan = rotation.check_prerequisites(lambda service, region: secrets, REQUEST,
                                        [_member("alpha", True), _member("beta")], CONFIG)
    assert plan.accounting_cluster == "alpha" and plan.clusters == ["alpha", "beta"]
    assert plan.current_sha256 == "a" * 64 and plan.current_version_id


@pytest.mark.parametrize("members, says", [
    ([_member("alpha", True), _member("beta", sha="b" * 64), _member("gamma", sha="c" * 64)],
     "beta, gamma run.* other than the accounting cluster alpha's: pair them"),
    ([_member("beta")], "its accounting cluster .* is not a live, tagged stack"),
    ([_member("alpha", True), _member("beta", ctld=False)], "beta: slurmctld is not active"),
    ([_member("alpha", True, dbd=False), _member("beta")], "alpha: the federation's slurmdbd is not active"),
])
def test_each_broken_prerequisite_is_named(secrets, members, says):
    _our_secret(secrets, "QUFBQQ==")
    with pytest.raises(PrerequisiteFailed, match=says):
        rotation.check_prerequisites(lambda service, region: secrets, REQUEST, members, CONFIG)


def test_a_federation_never_paired_has_no_secret_to_rotate(secrets):
    with pytest.raises(PrerequisiteFailed, match="does not exist: pair a member first"):
        rotation.check_prerequisites(lambda service, region: secrets, REQUEST, [_member("alpha", True)], CONFIG)


@pytest.mark.parametrize("created", [
    {},  # by hand, no tag, the default aws/secretsmanager key
    {"Tags": [{"Key": "slurm-multicluster:deployment", "Value": "other"}], "KmsKeyId": KEY_ARN},
    {"Tags": [{"Key": "slurm-multicluster:deployment", "Value": "default"}],
     "KmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/99999999-2222-3333-4444-555555555555"},
])
def test_a_rotation_never_writes_into_a_secret_this_deployment_did_not_create(secrets, created):
    secrets.create_secret(Name=SECRET, SecretString="QUFBQQ==", **created)
    with pytest.raises(PrerequisiteFailed, match="was not created by slurm-multicluster deployment default"):
        rotation.check_prerequisites(lambda service, region: secrets, REQUEST, [_member("alpha", True)], CONFIG)


# ---------------------------------------------------------------- Map outcomes


def test_every_member_whose_switch_failed_is_named():
    check = rotation.OutcomesCheck(step="SwitchMembers", outcomes=[
        rotation.MemberOutcome(cluster_name="alpha", ok=True),
        rotation.MemberOutcome(cluster_name="beta", ok=False, error="NodeCommandFailed", cause="slurmctld died"),
        rotation.MemberOutcome(cluster_name="gamma", ok=False, error="States.Timeout", cause="timed out"),
    ])
    with pytest.raises(rotation.MemberSwitchFailed, match=r"SwitchMembers failed on beta, gamma \(beta: NodeCommandFailed"):
        rotation.confirm_outcomes(check)


def test_outcomes_all_ok_pass():
    check = rotation.OutcomesCheck(step="StagePendingKey", outcomes=[rotation.MemberOutcome(cluster_name="a", ok=True)])
    assert rotation.confirm_outcomes(check) == ["a"]


# ---------------------------------------------------------------- the secret's compensation


def _secret_with_pending(secrets) -> tuple[str, str, str]:
    arn = secrets.create_secret(Name="slurm-multicluster/default/hpc/munge-key", SecretString="QUFBQQ==")["ARN"]
    (old,) = secrets.describe_secret(SecretId=arn)["VersionIdsToStages"]
    new = "11111111-2222-5333-8444-555555555555"
    secrets.put_secret_value(SecretId=arn, SecretString="QkJCQg==", ClientRequestToken=new, VersionStages=["AWSPENDING"])
    return arn, old, new


def _state(arn: str, old: str, new: str) -> rotation.RotationState:
    request = REQUEST.model_copy(update={"version_id": new})
    plan = rotation.RotationPlan(federation="hpc", secret_arn=arn, secret_region="us-east-1", accounting_cluster="alpha",
                                 clusters=["alpha"], current_sha256="a" * 64, current_version_id=old)
    return rotation.RotationState(request=request, plan=plan)


def test_discarding_takes_only_the_pending_label_off_the_new_version(secrets):
    arn, old, new = _secret_with_pending(secrets)
    assert rotation.discard_pending_key(lambda service, region: secrets, _state(arn, old, new))["discarded"] is True
    stages = secrets.describe_secret(SecretId=arn)["VersionIdsToStages"]
    assert stages[old] == ["AWSCURRENT"] and stages[new] == []


def test_discarding_after_a_finish_that_took_effect_puts_awscurrent_back(secrets):
    arn, old, new = _secret_with_pending(secrets)
    secrets.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=new,
                                        RemoveFromVersionId=old)
    rotation.discard_pending_key(lambda service, region: secrets, _state(arn, old, new))
    stages = secrets.describe_secret(SecretId=arn)["VersionIdsToStages"]
    assert "AWSCURRENT" in stages[old] and "AWSCURRENT" not in stages[new] and "AWSPENDING" not in stages[new]
