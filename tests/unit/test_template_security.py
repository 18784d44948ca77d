"""template.yaml's guarantees about the munge key, read from the template itself (moto does not enforce IAM or KMS
policies): no function can read or write a key value, and the secrets' KMS key serves only Secrets Manager, only
this deployment's secrets."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from lab.cloud import load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
FUNCTIONS = {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}
KEY_VALUE_ACTIONS = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(policies: list[Any]) -> list[dict[str, Any]]:
    """Inline statements of a function's Policies (managed policies of this template resolved, SAM templates named)."""
    found = []
    for policy in policies:
        if isinstance(policy, dict) and "Statement" in policy:
            found += _listed(policy["Statement"])
        elif isinstance(policy, dict) and "Ref" in policy and policy["Ref"] in RESOURCES:
            found += _listed(RESOURCES[policy["Ref"]]["Properties"]["PolicyDocument"]["Statement"])
    return found


def _boundary() -> dict[str, Any]:
    ref = TEMPLATE["Globals"]["Function"]["PermissionsBoundary"]
    return RESOURCES[ref["Ref"]]


def test_every_function_gets_the_permissions_boundary_and_none_overrides_it():
    boundary = _boundary()
    assert boundary["Type"] == "AWS::IAM::ManagedPolicy"
    assert FUNCTIONS and [n for n, f in FUNCTIONS.items() if "PermissionsBoundary" in f["Properties"]] == []


def test_the_boundary_denies_reading_and_writing_any_secret_value():
    statements = _listed(_boundary()["Properties"]["PolicyDocument"]["Statement"])
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert any(sorted(_listed(s["Action"])) == KEY_VALUE_ACTIONS and s["Resource"] == "*" and "Condition" not in s
               for s in denies)
    allowed = [a for s in statements if s["Effect"] == "Allow" for a in _listed(s["Action"])]
    assert not any(fnmatch.fnmatch(action, pattern) for pattern in allowed for action in KEY_VALUE_ACTIONS)
    assert not any(a.endswith(":*") or a == "*" for a in allowed), "the boundary lists actions, not whole services"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_no_function_allows_a_secret_value_and_the_boundary_covers_what_it_needs(name):
    statements = _statements(FUNCTIONS[name]["Properties"].get("Policies", []))
    boundary = _listed(_boundary()["Properties"]["PolicyDocument"]["Statement"])
    ceiling = [a for s in boundary if s["Effect"] == "Allow" for a in _listed(s["Action"])]
    for statement in statements:
        if statement["Effect"] != "Allow":
            continue
        for action in _listed(statement["Action"]):
            assert not any(fnmatch.fnmatch(value, action) for value in KEY_VALUE_ACTIONS), f"{name} allows {action}"
            assert any(fnmatch.fnmatch(action, allowed) for allowed in ceiling), \
                f"{name} needs {action}: add it to LambdaPermissionsBoundary (or the boundary cuts it off)"


def test_every_function_knows_the_secrets_kms_key_and_the_break_glass_role():
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["MUNGE_KEY_KMS_KEY_ARN"] == {"Fn::GetAtt": ["MungeKeyEncryptionKey", "Arn"]}
    assert variables["BREAK_GLASS_ROLE_ARN"] == {"Ref": "BreakGlassRoleArn"}
    assert TEMPLATE["Parameters"]["BreakGlassRoleArn"]["Default"] == ""


def _key_policy() -> list[dict[str, Any]]:
    key = RESOURCES["MungeKeyEncryptionKey"]
    assert key["Type"] == "AWS::KMS::Key" and key["Properties"]["EnableKeyRotation"] is True
    return key["Properties"]["KeyPolicy"]["Statement"]


def test_the_account_administers_the_kms_key_but_cannot_use_it_directly():
    (admin,) = [s for s in _key_policy() if s["Principal"] != {"AWS": "*"}]
    assert admin["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    assert any(fnmatch.fnmatch("kms:PutKeyPolicy", pattern) for pattern in admin["Action"])  # IAM can manage it
    for use in ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:ReEncryptTo"):
        assert not any(fnmatch.fnmatch(use, pattern) for pattern in admin["Action"]), use


def test_the_kms_key_decrypts_only_through_secrets_manager_for_this_deployments_secrets():
    users = [s for s in _key_policy() if s["Principal"] == {"AWS": "*"}]
    assert users and all(s["Effect"] == "Allow" for s in users)
    for statement in users:
        equals = statement["Condition"]["StringEquals"]
        assert equals["kms:CallerAccount"] == {"Ref": "AWS::AccountId"}
        assert equals["kms:ViaService"] == {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}
    crypto = [s for s in users if set(_listed(s["Action"])) & {"kms:Decrypt", "kms:GenerateDataKey*"}]
    assert len(crypto) == 1 and sorted(_listed(crypto[0]["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert crypto[0]["Condition"]["StringLike"] == {"kms:EncryptionContext:SecretARN": {"Fn::Sub": (
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SecretNamePrefix}/${DeploymentId}/*")}}
    others = [a for s in users if s is not crypto[0] for a in _listed(s["Action"])]
    assert others == ["kms:DescribeKey"]
