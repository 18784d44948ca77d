"""The federation secret's resource policy and ownership checks (munge_secret), against moto's Secrets Manager.

moto stores resource policies without evaluating them: ``may`` (tests/workflow/test_pairing_secret.py) evaluates
what our policies use, so these tests assert who may do what, not only the JSON's shape.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import munge_secret
from slurm_multicluster.errors import PrerequisiteFailed
from slurm_multicluster.models import HeadNode, Member
from slurm_multicluster.settings import Settings
from workflow.test_pairing_secret import may

REGION = "us-east-1"
NAME = "slurm-multicluster/default/hpc/munge-key"
ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{NAME}-AbCdEf"
BREAK_GLASS = "arn:aws:iam::123456789012:role/BreakGlass"
READ, WRITE, REKEY = "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecret"


def _member(name: str, accounting: bool = False) -> Member:
    return Member(cluster_name=name, stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{name}/1",
                  region=REGION, federation="hpc", is_accounting=accounting,
                  head_node=HeadNode(instance_id="i-0123456789abcdef0", private_ip="10.0.0.1", security_group_ids=[],
                                     vpc_id="vpc-1", role_arn=f"arn:aws:iam::123456789012:role/parallelcluster/{name}-head"))


ALPHA, BETA = _member("alpha", accounting=True), _member("beta")


@pytest.fixture
def secrets() -> Iterator[Any]:
    for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_SESSION_TOKEN": "t"}.items():
        os.environ.setdefault(key, value)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


@pytest.fixture
def config(secrets: Any) -> Settings:
    key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    return Settings(munge_key_kms_key_arn=key, break_glass_role_arn=BREAK_GLASS)


def test_members_read_the_accounting_head_writes_and_everyone_else_is_denied():
    policy = json.dumps(munge_secret.access_policy(ARN, [ALPHA, BETA]))
    alpha, beta = ALPHA.head_node.role_arn, BETA.head_node.role_arn
    assert (may(policy, alpha, READ), may(policy, beta, READ)) == (True, True)
    assert (may(policy, alpha, WRITE), may(policy, beta, WRITE)) == (True, False)
    for outsider in ("arn:aws:iam::123456789012:role/Admin", "arn:aws:iam::123456789012:root", BREAK_GLASS):
        assert [may(policy, outsider, action, identity_allows=True) for action in (READ, WRITE, REKEY)] == [False] * 3
    deny = next(s for s in json.loads(policy)["Statement"] if s["Effect"] == "Deny")
    assert "NotPrincipal" not in deny and deny["Principal"] == {"AWS": "*"}  # a Condition, not NotPrincipal
    assert deny["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": sorted([alpha, beta])}}
    assert sorted(deny["Action"]) == sorted([READ, WRITE, REKEY]) and deny["Resource"] == ARN


def test_the_break_glass_role_is_not_denied_but_gets_no_grant_either():
    policy = json.dumps(munge_secret.access_policy(ARN, [ALPHA], BREAK_GLASS))
    deny = next(s for s in json.loads(policy)["Statement"] if s["Effect"] == "Deny")
    assert BREAK_GLASS in deny["Condition"]["StringNotEquals"]["aws:PrincipalArn"]
    # not denied: its own identity policy decides (same account); the resource policy grants it nothing
    assert may(policy, BREAK_GLASS, READ, identity_allows=True) and not may(policy, BREAK_GLASS, READ)
    assert not may(policy, "arn:aws:iam::123456789012:role/Admin", READ, identity_allows=True)


def test_no_member_left_still_denies_everyone_but_break_glass(secrets, config):
    arn, _ = munge_secret.ensure_secret(secrets, NAME, "hpc", config)
    munge_secret.set_access(secrets, arn, [ALPHA, BETA], config.break_glass_role_arn)

    assert munge_secret.set_access(secrets, arn, [], config.break_glass_role_arn) == []

    policy = secrets.get_resource_policy(SecretId=arn)["ResourcePolicy"]
    statements = json.loads(policy)["Statement"]
    assert [s["Effect"] for s in statements] == ["Deny"]
    assert statements[0]["Condition"] == {"StringNotEquals": {"aws:PrincipalArn": [BREAK_GLASS]}}
    assert not any(may(policy, m.head_node.role_arn, READ, identity_allows=True) for m in (ALPHA, BETA))
    assert may(policy, BREAK_GLASS, READ, identity_allows=True)
    without_break_glass = json.dumps(munge_secret.access_policy(ARN, []))
    assert json.loads(without_break_glass)["Statement"] == [{
        "Sid": "NobodyElseTouchesMungeKey", "Effect": "Deny", "Principal": {"AWS": "*"},
        "Action": [READ, WRITE, REKEY], "Resource": ARN}]


def test_the_policy_is_put_with_block_public_policy(secrets, config):
    sent: list[dict[str, Any]] = []
    secrets.meta.events.register("provide-client-params.secrets-manager.PutResourcePolicy",
                                 lambda params, **_: sent.append(dict(params)))
    arn, _ = munge_secret.ensure_secret(secrets, NAME, "hpc", config)
    munge_secret.set_access(secrets, arn, [ALPHA])
    munge_secret.set_access(secrets, arn, [])
    assert [call["BlockPublicPolicy"] for call in sent] == [True, True]


def test_the_secret_is_created_with_the_deployment_tag_the_federation_tag_and_our_key(secrets, config):
    arn, has_value = munge_secret.ensure_secret(secrets, NAME, "hpc", config)
    described = secrets.describe_secret(SecretId=arn)
    assert has_value is False and described["KmsKeyId"] == config.munge_key_kms_key_arn
    assert {t["Key"]: t["Value"] for t in described["Tags"]} == {
        "slurm-multicluster:deployment": "default", "slurm-multicluster:federation": "hpc"}
    assert munge_secret.ensure_secret(secrets, NAME, "hpc", config) == (arn, False)  # ours: used as it is


@pytest.mark.parametrize("tags, kms, says", [
    ([], "ours", "it has no slurm-multicluster:deployment tag"),
    ([{"Key": "slurm-multicluster:deployment", "Value": "other"}], "ours", "its slurm-multicluster:deployment tag is 'other', not this deployment's"),
    ([{"Key": "slurm-multicluster:deployment", "Value": "default"}], "theirs", "it is encrypted with arn:aws:kms:"),
])
def test_a_foreign_secret_is_refused_untouched_even_when_it_appears_after_the_plan(secrets, config, tags, kms, says):
    theirs = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    secrets.create_secret(Name=NAME, Tags=tags, KmsKeyId=config.munge_key_kms_key_arn if kms == "ours" else theirs)
    sent: list[str] = []
    secrets.meta.events.register("provide-client-params.secrets-manager.*",
                                 lambda params, model, **_: sent.append(model.name))

    with pytest.raises(PrerequisiteFailed, match=f"the federation secret {NAME} .* was not created by "
                                                 f"slurm-multicluster deployment default: {says}"):
        munge_secret.ensure_secret(secrets, NAME, "hpc", config)

    assert sent == ["DescribeSecret"]


def test_a_secret_by_our_key_id_rather_than_its_arn_is_ours(secrets, config):
    key_id = config.munge_key_kms_key_arn.rsplit("/", 1)[-1]
    secrets.create_secret(Name=NAME, KmsKeyId=key_id, Tags=[{"Key": "slurm-multicluster:deployment", "Value": "default"}])
    assert munge_secret.check_ours(secrets, NAME, config) is not None


def test_a_kms_key_of_another_region_cannot_encrypt_the_secret_and_is_refused_by_name(secrets, config):
    elsewhere = boto3.client("secretsmanager", region_name="eu-west-1")
    with pytest.raises(PrerequisiteFailed, match="belongs in eu-west-1 .* KMS key is in us-east-1"):
        munge_secret.check_ours(elsewhere, NAME, config)


def test_without_the_templates_key_nothing_is_created(secrets):
    with pytest.raises(PrerequisiteFailed, match="MUNGE_KEY_KMS_KEY_ARN is not set"):
        munge_secret.ensure_secret(secrets, NAME, "hpc", Settings())
    assert secrets.list_secrets()["SecretList"] == []


def test_an_unpairing_takes_only_the_departing_role_away_and_gives_no_one_new_access(secrets, config):
    from slurm_multicluster import unpairing

    gamma = _member("gamma")  # tagged, but its pairing failed: it never could read the key
    arn, _ = munge_secret.ensure_secret(secrets, NAME, "hpc", config)
    munge_secret.set_access(secrets, arn, [ALPHA, BETA])
    departure = unpairing.Departure(member=True, reason="deleted", federation="hpc", cluster_name="beta", region=REGION,
                                    head_role_arn=BETA.head_node.role_arn)

    outcome = unpairing.update_secret_access(_clients, departure, config.model_copy(update={"deployment_region": REGION}))

    assert outcome == {"secret": arn, "readers": [ALPHA.head_node.role_arn], "revoked": [BETA.head_node.role_arn]}
    policy = secrets.get_resource_policy(SecretId=arn)["ResourcePolicy"]
    assert [may(policy, m.head_node.role_arn, READ) for m in (ALPHA, BETA, gamma)] == [True, False, False]
    assert may(policy, ALPHA.head_node.role_arn, WRITE) and not may(policy, BETA.head_node.role_arn, WRITE)


def _clients(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)


def test_an_unpairing_leaves_a_foreign_secret_alone(secrets, config):
    from slurm_multicluster import unpairing

    secrets.create_secret(Name=NAME)
    departure = unpairing.Departure(member=True, reason="deleted", federation="hpc", cluster_name="beta", region=REGION)
    outcome = unpairing.update_secret_access(_clients, departure, config.model_copy(update={"deployment_region": REGION}))
    assert outcome["readers"] == [] and "not created by this deployment" in outcome["reason"]
    assert "ResourcePolicy" not in secrets.get_resource_policy(SecretId=NAME)
