"""The federation secret through the real pairing ASL in moto (real Lambdas in-process, nodes simulated behind the
SSM seam): the product creates it itself (its deployment tag, its KMS key), refuses a same-named secret someone
else made before anything changes, and its policy lets exactly the members running the key read it.

moto does not evaluate resource policies, so the simulated head nodes do: a head node reads the key only when the
secret's policy, as ``may`` evaluates it, lets its role (the subset of IAM policy logic our policies use).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from lab import cloud
from lab.parallelcluster import ClusterInAws, create_cluster, create_network
from workflow.conftest import REGION
from workflow.simulated_nodes import SimulatedFederation, SimulatedNode, sha256

FEDERATION = "hpc"
SECRET = f"slurm-multicluster/default/{FEDERATION}/munge-key"
ACCOUNT = "123456789012"
CLUSTERS = {"alpha": "10.253.0.11", "beta": "10.253.0.21", "gamma": "10.253.0.31"}


def deployment_key_arn(deployment: cloud.Deployment) -> str:
    """The ARN of the template's MungeKeyEncryptionKey, as every function's environment carries it."""
    any_function = next(iter(deployment.functions.values()))
    configuration = boto3.client("lambda", region_name=deployment.region).get_function_configuration(FunctionName=any_function)
    return configuration["Environment"]["Variables"]["MUNGE_KEY_KMS_KEY_ARN"]


def may(policy_text: str | None, principal_arn: str, action: str, identity_allows: bool = False) -> bool:
    """Does a secret resource policy let ``principal_arn`` do ``action``? An explicit Deny wins; otherwise an Allow
    in the resource policy, or (same account) in the principal's own identity policies: ``identity_allows`` stands
    for an administrator whose IAM policies allow everything. Covers what our policies use: Principal AWS lists or
    "*", Action lists, StringNotEquals on aws:PrincipalArn."""
    statements = json.loads(policy_text)["Statement"] if policy_text else []

    def applies(statement: dict[str, Any]) -> bool:
        principals = statement["Principal"]["AWS"]
        principals = [principals] if isinstance(principals, str) else principals
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action not in actions or not ("*" in principals or principal_arn in principals):
            return False
        for operator, conditions in statement.get("Condition", {}).items():
            assert operator == "StringNotEquals" and list(conditions) == ["aws:PrincipalArn"], "not modelled"
            if principal_arn in conditions["aws:PrincipalArn"]:
                return False
        return True

    if any(s["Effect"] == "Deny" and applies(s) for s in statements):
        return False
    return identity_allows or any(s["Effect"] == "Allow" and applies(s) for s in statements)


class PairingNodes(SimulatedFederation):
    """The rotation simulator plus what a pairing runs: the accounting head uploads its key, a new member's head
    installs the secret's key (reading it with its own role, if the policy lets it), the accounting line."""

    def __init__(self, region: str, accounting: str, ips: dict[str, str]):
        super().__init__(region, accounting, ips)
        self.roles: dict[str, str] = {}  # cluster -> head node role ARN
        self.key_by_sha: dict[str, bytes] = {}
        self.denied: list[tuple[str, str]] = []  # (node, action) the secret's policy refused

    def key(self, data: bytes) -> str:
        self.keys.append(data)
        self.key_by_sha[sha256(data)] = data
        return sha256(data)

    def _allowed(self, node: SimulatedNode, secret_id: str, action: str) -> bool:
        policy = self._secrets().get_resource_policy(SecretId=secret_id).get("ResourcePolicy")
        if may(policy, self.roles[node.cluster], action):
            return True
        self.denied.append((node.name, action))
        return False

    def _upload_munge_key(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        secret = str(self._flags(args)["--secret-id"])
        if not self._allowed(node, secret, "secretsmanager:PutSecretValue"):
            return {"ok": False, "changed": False, "error": "AccessDeniedException on PutSecretValue"}
        self._secrets().put_secret_value(SecretId=secret, SecretString=base64.b64encode(self.key_by_sha[node.key_sha]).decode())
        return {"ok": True, "changed": True, "sha256": node.key_sha}

    def _install_munge_key(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        flags = self._flags(args)
        if "--secret-id" not in flags:
            if not flags.get("--from-shared-dir"):
                return super()._install_munge_key(node, args)  # the rotation's switch to a staged key
            sha = self.head(node.cluster).shared_sha
        else:
            secret = str(flags["--secret-id"])
            if not self._allowed(node, secret, "secretsmanager:GetSecretValue"):
                return {"ok": False, "changed": False, "error": "AccessDeniedException on GetSecretValue"}
            sha = sha256(base64.b64decode(self._secrets().get_secret_value(SecretId=secret)["SecretString"]))
        if sha != flags["--expect-sha256"]:
            return {"ok": False, "changed": False, "error": f"fingerprint mismatch: {sha}"}
        node.backups.setdefault(str(flags["--backup-id"]), {"key": node.key_sha, "shared": node.shared_sha})
        changed = node.key_sha != sha
        node.key_sha = sha
        if flags.get("--shared-dirs"):
            node.shared_sha = sha
        return {"ok": True, "changed": changed, "sha256": sha, "restarted": ["munge"] if changed else []}

    def _set_accounting(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        return {"ok": True, "changed": False}


@dataclass
class PairingAws:
    deployment: cloud.Deployment
    nodes: PairingNodes
    clusters: dict[str, ClusterInAws]
    federation_sha: str
    ssm_offline: set[str] = field(default_factory=set)  # instances whose SSM agent is not Online

    def pair(self, name: str) -> dict[str, Any]:
        arn = cloud.route_event(self.deployment, cloud.stack_status_event(self.clusters[name].stack_id, "CREATE_COMPLETE", REGION))
        assert arn is not None
        return cloud.wait_for_execution(arn, REGION, timeout=120)

    def role(self, name: str) -> str:
        return self.clusters[name].head_role_arn

    def policy(self) -> str | None:
        return boto3.client("secretsmanager", region_name=REGION).get_resource_policy(SecretId=SECRET).get("ResourcePolicy")


@pytest.fixture
def pairing_aws(aws_env: None) -> Iterator[PairingAws]:
    """alpha (accounting) runs the federation key; gamma runs it too (paired before); beta, new, its own key.
    No secret exists yet; the template is deployed; SSM reaches the simulated nodes."""
    from slurm_multicluster import aws

    aws.client.cache_clear()
    with mock_aws(config=cloud.MOTO_CONFIG):
        deployment = cloud.deploy(REGION, {"VerifyDeadlineSeconds": "10"})
        network = create_network(REGION, "10.253.0.0/24")
        nodes = PairingNodes(REGION, "alpha", CLUSTERS)
        federation_sha, beta_sha = nodes.key(os.urandom(1024)), nodes.key(os.urandom(1024))
        clusters = {}
        for name, ip in CLUSTERS.items():
            tags = {"slurm-multicluster:federation": FEDERATION}
            if name == "alpha":
                tags["slurm-multicluster:role"] = "accounting"
            clusters[name] = create_cluster(network, name, ip, [ip[:-1] + "2"], tags)
            key_sha = beta_sha if name == "beta" else federation_sha
            nodes.add(SimulatedNode(f"{name}-head", name, "head", clusters[name].head_instance_id, key_sha, key_sha))
            nodes.add(SimulatedNode(f"{name}-compute-1", name, "compute", clusters[name].compute_instance_ids[0], key_sha))
            nodes.roles[name] = clusters[name].head_role_arn
        nodes.secret_id = SECRET
        offline: set[str] = set()
        with cloud.real_lambda_handlers(deployment), cloud.ssm_runs_on(
                nodes.execute, routable=nodes.knows, registered=lambda instance_id: instance_id not in offline):
            yield PairingAws(deployment, nodes, clusters, federation_sha, offline)
    aws.client.cache_clear()


def test_the_pairing_creates_the_secret_tagged_and_encrypted_with_the_deployments_own_key(pairing_aws):
    result = pairing_aws.pair("beta")

    assert result["status"] == "SUCCEEDED", result.get("cause")
    described = boto3.client("secretsmanager", region_name=REGION).describe_secret(SecretId=SECRET)
    assert {t["Key"]: t["Value"] for t in described["Tags"]} == {
        "slurm-multicluster:deployment": "default", "slurm-multicluster:federation": FEDERATION}
    key_arn = deployment_key_arn(pairing_aws.deployment)
    assert described["KmsKeyId"] == key_arn
    assert boto3.client("kms", region_name=REGION).describe_key(KeyId=key_arn)["KeyMetadata"]["KeyManager"] == "CUSTOMER"
    assert {n.name: n.key_sha for n in pairing_aws.nodes.of("beta")} == {
        "beta-head": pairing_aws.federation_sha, "beta-compute-1": pairing_aws.federation_sha}


def test_only_the_members_running_the_key_may_read_it_and_only_the_accounting_head_may_write_it(pairing_aws):
    assert pairing_aws.pair("beta")["status"] == "SUCCEEDED"

    policy = pairing_aws.policy()
    alpha, beta, gamma = pairing_aws.role("alpha"), pairing_aws.role("beta"), pairing_aws.role("gamma")
    assert [may(policy, role, "secretsmanager:GetSecretValue") for role in (alpha, beta, gamma)] == [True, True, True]
    assert [may(policy, role, "secretsmanager:PutSecretValue") for role in (alpha, beta, gamma)] == [True, False, False]
    for outsider in (f"arn:aws:iam::{ACCOUNT}:role/Admin", f"arn:aws:iam::{ACCOUNT}:root",
                     f"arn:aws:iam::{ACCOUNT}:role/slurm-multicluster-SyncMungeKeyFunctionRole"):
        assert not any(may(policy, outsider, f"secretsmanager:{a}", identity_allows=True)
                       for a in ("GetSecretValue", "PutSecretValue", "UpdateSecret")), outsider
    assert pairing_aws.nodes.denied == []


FOREIGN_SECRETS = {
    "untagged": lambda key_arn, attacker_key: {"Tags": [], "KmsKeyId": key_arn},
    "another deployment's tag": lambda key_arn, attacker_key: {
        "Tags": [{"Key": "slurm-multicluster:deployment", "Value": "prod"}], "KmsKeyId": key_arn},
    "our tag, the attacker's KMS key": lambda key_arn, attacker_key: {
        "Tags": [{"Key": "slurm-multicluster:deployment", "Value": "default"}], "KmsKeyId": attacker_key},
    "our tag, the default aws/secretsmanager key": lambda key_arn, attacker_key: {
        "Tags": [{"Key": "slurm-multicluster:deployment", "Value": "default"}]},
}
WHY = {
    "untagged": "it has no slurm-multicluster:deployment tag",
    "another deployment's tag": "its slurm-multicluster:deployment tag is 'prod', not this deployment's 'default'",
    "our tag, the attacker's KMS key": "it is encrypted with arn:aws:kms:",
    "our tag, the default aws/secretsmanager key": "it is encrypted with the default aws/secretsmanager key",
}


@pytest.mark.parametrize("kind", FOREIGN_SECRETS)
def test_a_secret_someone_else_created_is_refused_before_anything_changes(pairing_aws, kind):
    secrets = boto3.client("secretsmanager", region_name=REGION)
    attacker_key = boto3.client("kms", region_name=REGION).create_key(Description="attacker")["KeyMetadata"]["Arn"]
    attacker_role = f"arn:aws:iam::{ACCOUNT}:role/attacker"
    secrets.create_secret(Name=SECRET, SecretString="placeholder",
                          **FOREIGN_SECRETS[kind](deployment_key_arn(pairing_aws.deployment), attacker_key))
    their_policy = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": attacker_role}, "Action": "secretsmanager:*", "Resource": "*"}]})
    secrets.put_resource_policy(SecretId=SECRET, ResourcePolicy=their_policy)
    before = secrets.describe_secret(SecretId=SECRET)

    result = pairing_aws.pair("beta")

    assert (result["status"], result["error"]) == ("FAILED", "PlanPairingFailed")
    cause = result["cause"]
    assert "PrerequisiteFailed" in cause and f"the federation secret {SECRET}" in cause and WHY[kind] in cause
    assert "was not created by slurm-multicluster deployment default" in cause and "delete it" in cause
    states = cloud.state_names(result["executionArn"], REGION)
    assert "AuthorizeIngress" not in states and "SyncMungeKey" not in states
    # untouched: their policy, their value, no key uploaded, no node changed
    assert secrets.get_resource_policy(SecretId=SECRET)["ResourcePolicy"] == their_policy
    assert secrets.get_secret_value(SecretId=SECRET)["SecretString"] == "placeholder"
    after = secrets.describe_secret(SecretId=SECRET)
    assert after["VersionIdsToStages"] == before["VersionIdsToStages"] and after.get("Tags") == before.get("Tags")
    assert [script for _, _, script in pairing_aws.nodes.calls if script != "discover-slurm.sh"] == []
    assert pairing_aws.nodes.head("beta").key_sha != pairing_aws.federation_sha


def test_a_failed_pairing_takes_the_new_members_read_access_back_and_others_keep_theirs(pairing_aws):
    assert pairing_aws.pair("gamma")["status"] == "SUCCEEDED"  # already runs the key: reads it from now on
    alpha, beta, gamma = pairing_aws.role("alpha"), pairing_aws.role("beta"), pairing_aws.role("gamma")
    assert not may(pairing_aws.policy(), beta, "secretsmanager:GetSecretValue"), "beta has not joined yet"
    pairing_aws.nodes.fail[("beta-head", "verify-member.sh")] = "sbatch --clusters=alpha --test-only fails"
    beta_sha = pairing_aws.nodes.head("beta").key_sha

    result = pairing_aws.pair("beta")

    assert (result["status"], result["error"]) == ("FAILED", "VerifyPairingFailed")
    states = cloud.state_names(result["executionArn"], REGION)
    assert states.index("SyncMungeKey") < states.index("RestoreSecretAccess") < states.index("ReleaseFederationLease")
    assert ("beta-head", "install-munge-key.sh") in [(n, s) for _, n, s in pairing_aws.nodes.calls]  # it did read it
    policy = pairing_aws.policy()
    assert [may(policy, role, "secretsmanager:GetSecretValue") for role in (alpha, beta, gamma)] == [True, False, True]
    assert pairing_aws.nodes.head("beta").key_sha == beta_sha  # its nodes are rolled back too


def test_a_rolled_back_re_pairing_of_a_member_running_the_key_keeps_its_read_access(pairing_aws):
    assert pairing_aws.pair("gamma")["status"] == "SUCCEEDED"
    pairing_aws.nodes.fail[("gamma-head", "verify-member.sh")] = "sbatch --clusters=alpha --test-only fails"

    result = pairing_aws.pair("gamma")

    assert result["status"] == "FAILED"
    assert may(pairing_aws.policy(), pairing_aws.role("gamma"), "secretsmanager:GetSecretValue")


def _as_a_pairing_of_gamma_left_it(aws: PairingAws) -> None:
    """The federation secret exists (empty: alpha uploads its key) and alpha and gamma may read it."""
    from slurm_multicluster import munge_secret
    from slurm_multicluster.settings import Settings

    secrets = boto3.client("secretsmanager", region_name=REGION)
    config = Settings(deployment_region=REGION, munge_key_kms_key_arn=deployment_key_arn(aws.deployment))
    arn, _ = munge_secret.ensure_secret(secrets, SECRET, FEDERATION, config)
    secrets.put_resource_policy(SecretId=arn, ResourcePolicy=json.dumps(munge_secret.role_policy(
        arn, [aws.role("alpha"), aws.role("gamma")], [aws.role("alpha")])))


def test_a_peer_the_pairing_skips_keeps_its_read_access_and_gains_none(pairing_aws):
    aws = pairing_aws
    _as_a_pairing_of_gamma_left_it(aws)
    aws.ssm_offline.add(aws.clusters["gamma"].head_instance_id)  # gamma does not resolve: skipped, still a member

    assert aws.pair("beta")["status"] == "SUCCEEDED"

    policy = aws.policy()
    assert [may(policy, aws.role(c), "secretsmanager:GetSecretValue") for c in ("alpha", "beta", "gamma")] == [
        True, True, True]
    assert not may(policy, aws.role("gamma"), "secretsmanager:PutSecretValue")


def test_a_rolled_back_pairing_gives_a_skipped_peer_its_access_back_and_takes_the_new_members(pairing_aws):
    aws = pairing_aws
    _as_a_pairing_of_gamma_left_it(aws)
    aws.ssm_offline.add(aws.clusters["gamma"].head_instance_id)
    aws.nodes.fail[("beta-head", "verify-member.sh")] = "sbatch --clusters=alpha --test-only fails"

    result = aws.pair("beta")

    assert (result["status"], result["error"]) == ("FAILED", "VerifyPairingFailed")
    assert "RestoreSecretAccess" in cloud.state_names(result["executionArn"], REGION)
    policy = aws.policy()
    assert [may(policy, aws.role(c), "secretsmanager:GetSecretValue") for c in ("alpha", "beta", "gamma")] == [
        True, False, True]
