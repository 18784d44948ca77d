"""The federation's munge key secret: ParallelCluster's MungeKeySecretArn format (base64 SecretString).

Lambdas only create the (empty) secret and manage who may read it; key bytes are written and read by the
node scripts with the head nodes' own roles, so they never pass through Lambda, Step Functions or SSM.
The product only ever uses a secret it created itself (its deployment tag, its KMS key): a secret of the same
name made by someone else would hand them the key, so it is refused before anything changes.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from slurm_multicluster.errors import PrerequisiteFailed
from slurm_multicluster.models import Member
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

KEY_ACTIONS = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecret"]


def describe(secretsmanager: Any, name: str) -> dict[str, Any] | None:
    """DescribeSecret of ``name`` (metadata and version labels, never the value), or None when it does not exist."""
    try:
        return secretsmanager.describe_secret(SecretId=name)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise


def current_version(described: dict[str, Any]) -> str | None:
    """The version id labelled AWSCURRENT in a DescribeSecret answer, or None when the secret has no value yet."""
    return next((version for version, labels in described.get("VersionIdsToStages", {}).items()
                 if "AWSCURRENT" in labels), None)


def _same_key(described_key: str | None, our_key_arn: str) -> bool:
    # DescribeSecret answers with the id the secret was created with: our key's ARN, or its bare key id.
    return bool(described_key) and described_key in (our_key_arn, our_key_arn.rsplit("/", 1)[-1])


def foreign_reason(described: dict[str, Any], config: Settings) -> str | None:
    """Why a DescribeSecret answer is not a secret this deployment created (None when it is ours)."""
    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
    tag = tags.get(config.deployment_tag_key)
    if tag != config.deployment_id:
        return (f"it has no {config.deployment_tag_key} tag" if tag is None
                else f"its {config.deployment_tag_key} tag is {tag!r}, not this deployment's {config.deployment_id!r}")
    if not _same_key(described.get("KmsKeyId"), config.munge_key_kms_key_arn):
        return (f"it is encrypted with {described.get('KmsKeyId') or 'the default aws/secretsmanager key'}, "
                f"not this deployment's key {config.munge_key_kms_key_arn}")
    return None


def check_ours(secretsmanager: Any, name: str, config: Settings) -> dict[str, Any] | None:
    """The secret's DescribeSecret when it exists and this deployment created it, None when it does not exist yet;
    PrerequisiteFailed (naming the secret, why, and what to do) when someone else made it. Changes nothing."""
    if not config.munge_key_kms_key_arn:
        raise PrerequisiteFailed("MUNGE_KEY_KMS_KEY_ARN is not set: deploy the template (it creates MungeKeyEncryptionKey)")
    region = getattr(getattr(secretsmanager, "meta", None), "region_name", None)
    key_region = config.munge_key_kms_key_arn.split(":")[3]
    if region and region != key_region:
        raise PrerequisiteFailed(
            f"the federation secret {name} belongs in {region} (the accounting cluster's region) but this deployment's "
            f"KMS key is in {key_region}: deploy slurm-multicluster in {region}, the accounting cluster's region")
    described = describe(secretsmanager, name)
    if described is None:
        return None
    why = foreign_reason(described, config)
    if why:
        raise PrerequisiteFailed(
            f"the federation secret {name} ({described['ARN']}) was not created by slurm-multicluster deployment "
            f"{config.deployment_id}: {why}. Nothing was changed and no key was written to it. Whoever created it may "
            "be able to read what is stored in it: find out who did (CloudTrail CreateSecret); if it is not needed, "
            "delete it (aws secretsmanager delete-secret --force-delete-without-recovery) and run the pairing again, "
            "which creates the secret itself")
    return described


def ensure_secret(secretsmanager: Any, name: str, federation: str, config: Settings) -> tuple[str, bool]:
    """(ARN, has an AWSCURRENT value) of the federation secret, creating it empty when missing: tagged with this
    deployment and the federation, encrypted with the deployment's KMS key. A secret someone else created is
    refused (PrerequisiteFailed) untouched."""
    described = check_ours(secretsmanager, name, config)
    if described is None:
        created = secretsmanager.create_secret(
            Name=name,
            Description=f"Munge key shared by the Slurm federation {federation} (base64, ParallelCluster MungeKeySecretArn format)",
            KmsKeyId=config.munge_key_kms_key_arn,
            Tags=[{"Key": config.deployment_tag_key, "Value": config.deployment_id},
                  {"Key": config.federation_tag_key, "Value": federation}],
        )
        logger.info("created federation secret", extra={"secret": name})
        return created["ARN"], False
    return described["ARN"], current_version(described) is not None


def access_policy(secret_arn: str, members: list[Member], break_glass_role_arn: str = "") -> dict[str, Any]:
    """Resource policy: every given member's head node role may read the key, the accounting one may write it, and
    every other principal (but the optional break-glass role) is denied reading, writing and re-keying it, whatever
    its identity policies say. No member -> a policy that denies everyone (but break-glass)."""
    return role_policy(secret_arn, sorted({m.head_node.role_arn for m in members if m.head_node.role_arn}),
                       sorted({m.head_node.role_arn for m in members if m.is_accounting and m.head_node.role_arn}),
                       break_glass_role_arn)


def role_policy(secret_arn: str, readers: list[str], writers: list[str], break_glass_role_arn: str = "") -> dict[str, Any]:
    """access_policy by role ARNs: ``readers`` may read the key, ``writers`` write it, everyone else is denied."""
    readers, writers = sorted(set(readers) | set(writers)), sorted(set(writers))
    statements: list[dict[str, Any]] = []
    if readers:
        statements.append(
            {
                "Sid": "MemberHeadNodesReadMungeKey",
                "Effect": "Allow",
                "Principal": {"AWS": readers},
                "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                "Resource": secret_arn,
            }
        )
    if writers:
        statements.append(
            {
                "Sid": "AccountingHeadNodeWritesMungeKey",
                "Effect": "Allow",
                "Principal": {"AWS": writers},
                "Action": ["secretsmanager:PutSecretValue"],
                "Resource": secret_arn,
            }
        )
    exempt = sorted({*readers, *([break_glass_role_arn] if break_glass_role_arn else [])})
    deny: dict[str, Any] = {
        "Sid": "NobodyElseTouchesMungeKey",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": KEY_ACTIONS,
        "Resource": secret_arn,
    }
    if exempt:  # aws:PrincipalArn is the role ARN for any session of that role (NotPrincipal would need each session)
        deny["Condition"] = {"StringNotEquals": {"aws:PrincipalArn": exempt}}
    statements.append(deny)
    return {"Version": "2012-10-17", "Statement": statements}


def readers(policy_text: str | None, sid: str = "MemberHeadNodesReadMungeKey") -> list[str]:
    """The head node roles a resource policy of ours lets read the key (``sid``: the statement to read)."""
    statements = json.loads(policy_text)["Statement"] if policy_text else []
    principals = [s["Principal"]["AWS"] for s in statements if s.get("Sid") == sid]
    return sorted({arn for p in principals for arn in ([p] if isinstance(p, str) else p)})


def revoke_readers(secretsmanager: Any, secret_arn: str, roles: list[str], break_glass_role_arn: str = "") -> list[str]:
    """The policy recomputed as its current readers (and writer) minus ``roles``, whoever else reads: a departed
    cluster loses access even when the rest of the federation cannot be discovered. Returns the readers left."""
    policy_text = secretsmanager.get_resource_policy(SecretId=secret_arn).get("ResourcePolicy")
    gone = set(roles)
    staying = [r for r in readers(policy_text) if r not in gone]
    writers = [r for r in readers(policy_text, "AccountingHeadNodeWritesMungeKey") if r not in gone]
    policy = role_policy(secret_arn, staying, writers, break_glass_role_arn)
    secretsmanager.put_resource_policy(SecretId=secret_arn, ResourcePolicy=json.dumps(policy), BlockPublicPolicy=True)
    logger.info("secret readers revoked", extra={"secret": secret_arn, "revoked": sorted(gone), "readers": staying})
    return sorted(set(staying) | set(writers))


def current_readers(secretsmanager: Any, secret_arn: str) -> list[str]:
    """The head node roles the secret's resource policy lets read the key now (GetResourcePolicy: no value)."""
    return readers(secretsmanager.get_resource_policy(SecretId=secret_arn).get("ResourcePolicy"))


def secret_arn(secretsmanager: Any, name: str) -> str | None:
    """The ARN of the secret called ``name``, or None when it does not exist."""
    described = describe(secretsmanager, name)
    return described["ARN"] if described else None


def set_access(secretsmanager: Any, secret_arn: str, members: list[Member], break_glass_role_arn: str = "",
               kept_readers: list[str] | None = None) -> list[str]:
    """Make the resource policy grant exactly ``members``' head node roles and ``kept_readers`` (computed, not
    appended, so a member that left loses access) and deny everyone else; no role left -> a policy that denies
    everyone, never no policy. Returns the reader role ARNs."""
    granted = sorted({m.head_node.role_arn for m in members if m.head_node.role_arn} | set(kept_readers or []))
    policy = role_policy(secret_arn, granted,
                         sorted({m.head_node.role_arn for m in members if m.is_accounting and m.head_node.role_arn}),
                         break_glass_role_arn)
    secretsmanager.put_resource_policy(SecretId=secret_arn, ResourcePolicy=json.dumps(policy), BlockPublicPolicy=True)
    logger.info("secret access set", extra={"secret": secret_arn, "members": [m.cluster_name for m in members],
                                            "keptReaders": kept_readers or []})
    return granted


def readers_to_keep(secretsmanager: Any, secret_arn: str, skipped: list[Any]) -> list[str]:
    """The current readers that are head node roles of skipped members (unresolvable this run, members all the
    same): a pairing that cannot see them must not take their access away, nor grant any they do not have."""
    theirs = {s.head_role_arn for s in skipped if s.head_role_arn}
    return [role for role in current_readers(secretsmanager, secret_arn) if role in theirs] if theirs else []
