"""The federation's munge key secret: ParallelCluster's MungeKeySecretArn format (base64 SecretString).

Lambdas only create the (empty) secret and manage who may read it; key bytes are written and read by the
node scripts with the head nodes' own roles, so they never pass through Lambda, Step Functions or SSM.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from slurm_multicluster.models import Member

logger = Logger(child=True)


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


def ensure_secret(secretsmanager: Any, name: str, federation: str, tag_key: str) -> tuple[str, bool]:
    """(ARN, has an AWSCURRENT value) of the federation secret, creating it empty when missing."""
    described = describe(secretsmanager, name)
    if described is None:
        created = secretsmanager.create_secret(
            Name=name,
            Description=f"Munge key shared by the Slurm federation {federation} (base64, ParallelCluster MungeKeySecretArn format)",
            Tags=[{"Key": tag_key, "Value": federation}],
        )
        logger.info("created federation secret", extra={"secret": name})
        return created["ARN"], False
    return described["ARN"], current_version(described) is not None


def access_policy(secret_arn: str, members: list[Member]) -> dict[str, Any]:
    """Resource policy: the accounting head node role may write the key; every member head node role may read it."""
    writers = sorted({m.head_node.role_arn for m in members if m.is_accounting and m.head_node.role_arn})
    readers = sorted({m.head_node.role_arn for m in members if m.head_node.role_arn})
    statements = []
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
    return {"Version": "2012-10-17", "Statement": statements}


def secret_arn(secretsmanager: Any, name: str) -> str | None:
    """The ARN of the secret called ``name``, or None when it does not exist."""
    described = describe(secretsmanager, name)
    return described["ARN"] if described else None


def set_access(secretsmanager: Any, secret_arn: str, members: list[Member]) -> list[str]:
    """Make the resource policy grant exactly ``members``' head node roles (computed, not appended, so a member
    that left loses access); no role left -> no policy. Returns the reader role ARNs."""
    policy = access_policy(secret_arn, members)
    if policy["Statement"]:
        secretsmanager.put_resource_policy(SecretId=secret_arn, ResourcePolicy=json.dumps(policy))
    else:
        secretsmanager.delete_resource_policy(SecretId=secret_arn)
    logger.info("secret access set", extra={"secret": secret_arn, "members": [m.cluster_name for m in members]})
    return sorted({m.head_node.role_arn for m in members if m.head_node.role_arn})
