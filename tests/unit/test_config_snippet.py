"""The config snippet for clusters created later: refusals (moto), and ParallelCluster's own schema accepting it."""

from __future__ import annotations

import copy
import importlib.util

import boto3
import pytest
import yaml
from moto import mock_aws

from lab import cloud
from lab.cloud import LambdaContext
from lab.parallelcluster import create_cluster, create_network, declare_federation
from slurm_multicluster import aws, config_snippet
from slurm_multicluster.errors import InvalidInput, PrerequisiteFailed
from slurm_multicluster.settings import Settings

REGION = "us-east-1"
FEDERATION = "hpc"
ACCOUNTING_TAGS = {"slurm-multicluster:federation": FEDERATION, "slurm-multicluster:role": "accounting"}
MEMBER_TAGS = {"slurm-multicluster:federation": FEDERATION}
SECRET = f"slurm-multicluster/default/{FEDERATION}/munge-key"
APP = cloud.code_dir("GenerateConfigSnippetFunction") / "app.py"


@pytest.fixture
def moto(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    aws.client.cache_clear()
    with mock_aws():
        yield create_network(REGION, "10.250.0.0/24")
    aws.client.cache_clear()


def _request(**given):
    return config_snippet.SnippetRequest.model_validate({"federation": FEDERATION, "region": REGION, **given})


def _generate(**given):
    return config_snippet.generate(aws.client, _request(**given), Settings(deployment_region=REGION))


@pytest.fixture
def handler():
    spec = importlib.util.spec_from_file_location("generate_config_snippet_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("event", [
    {"federation": "$(reboot)", "region": REGION},
    {"federation": "../../etc/passwd", "region": REGION},
    {"federation": "hpc\nrm -rf /", "region": REGION},
    {"federation": FEDERATION, "region": "us-east-1; id"},
    {"federation": FEDERATION, "region": "mars"},
    {"federation": FEDERATION, "region": REGION, "role": "admin"},
    {"federation": FEDERATION, "region": REGION, "secretName": "other/secret"},
    {"federation": FEDERATION},
    {},
])
def test_hostile_or_malformed_requests_are_refused_as_invalid_input(handler, moto, event):
    with pytest.raises(InvalidInput):
        handler(event, LambdaContext("GenerateConfigSnippetFunction", "arn:aws:lambda:us-east-1:123456789012:function:x"))


def test_a_federation_whose_secret_does_not_exist_has_not_been_paired_yet(moto):
    create_cluster(moto, "alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    create_cluster(moto, "beta", "10.250.0.21", [], MEMBER_TAGS)
    for role in ("member", "accounting"):
        with pytest.raises(PrerequisiteFailed, match=f"no cluster of federation {FEDERATION} has been paired yet, "
                                                     "pair the accounting cluster first"):
            _generate(role=role)


def test_a_federation_secret_without_a_current_key_has_not_been_paired_yet(moto):
    create_cluster(moto, "alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET)  # created, key never uploaded
    with pytest.raises(PrerequisiteFailed, match="has been paired yet.*no AWSCURRENT"):
        _generate()


def test_the_registry_not_a_tag_names_the_accounting_cluster(moto):
    alpha = create_cluster(moto, "alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    create_cluster(moto, "gamma", "10.250.0.31", [], ACCOUNTING_TAGS, admit="member")  # claims the role by its tag
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString="a2V5")
    accounting = config_snippet.accounting_clusters(aws.client, _request(), Settings(deployment_region=REGION))
    assert [m.stack_id for m in accounting] == [alpha.stack_id]


def test_a_member_snippet_needs_a_declared_federation(moto):
    create_cluster(moto, "beta", "10.250.0.21", [], MEMBER_TAGS, admit=None)
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString="a2V5")
    with pytest.raises(PrerequisiteFailed, match="federation hpc is not declared in the registry"):
        _generate()


def test_a_member_snippet_needs_a_live_accounting_cluster(moto):
    beta = create_cluster(moto, "beta", "10.250.0.21", [], MEMBER_TAGS, admit=None)
    declare_federation(REGION, FEDERATION, beta.stack_id.replace("/beta/", "/alpha/"))  # declared, not created yet
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString="a2V5")
    with pytest.raises(PrerequisiteFailed, match="accounting cluster .* is not a live, tagged stack"):
        _generate()


def test_clusters_of_other_federations_do_not_count(moto):
    create_cluster(moto, "alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    create_cluster(moto, "other", "10.250.0.41", [], {"slurm-multicluster:federation": "lab",
                                                      "slurm-multicluster:role": "accounting"})
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString="a2V5")
    assert _generate(role="accounting").role == "accounting"


# ---------------------------------------------------------------- the accounting variant (no node is asked)


def test_the_accounting_snippet_keeps_the_database_and_says_to_declare_the_new_stack(moto):
    create_cluster(moto, "alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString="a2V5")["ARN"]
    snippet = _generate(role="accounting")
    parsed = yaml.safe_load(snippet.yaml)
    assert parsed == snippet.config
    assert parsed["Scheduling"]["SlurmSettings"] == {"MungeKeySecretArn": arn}  # Database stays the admin's
    assert parsed["Tags"] == [{"Key": "slurm-multicluster:federation", "Value": FEDERATION}]  # no role tag: the registry decides
    assert any("declare it as the federation's accountingStackArn" in note for note in snippet.notes)
    assert {"Policy": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"} in parsed["HeadNode"]["Iam"]["AdditionalIamPolicies"]
    assert snippet.minimum_parallelcluster_version == "3.8.0"
    assert "# " in snippet.yaml and "3.8.0" in snippet.yaml and "a2V5" not in snippet.yaml


# ---------------------------------------------------------------- ParallelCluster's own schema

MINIMAL_CLUSTER = """
Region: us-east-1
Image: {Os: alinux2023}
HeadNode:
  InstanceType: c6g.large
  Networking: {SubnetId: subnet-0123456789abcdef0}
  Ssh: {KeyName: admin}
Scheduling:
  Scheduler: slurm
  SlurmQueues:
    - Name: q1
      ComputeResources: [{Name: c1, InstanceType: c6g.large, MinCount: 0, MaxCount: 4}]
      Networking: {SubnetIds: [subnet-0123456789abcdef0]}
"""
DATABASE = {"Uri": "accounting.cluster-abc.us-east-1.rds.amazonaws.com:3306", "UserName": "slurm",
            "PasswordSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:slurm-db-AbCdEf"}
ARN = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{SECRET}-AbCdEf"


def _merged(snippet: dict, base: dict) -> dict:
    """What an admin gets by pasting the snippet into a config (maps merged, lists extended)."""
    merged = copy.deepcopy(base)
    for key, value in snippet.items():
        if isinstance(value, dict):
            merged[key] = _merged(value, merged.get(key, {}))
        elif isinstance(value, list):
            merged[key] = [*merged.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def _rendered(role: str) -> str:
    settings = Settings()
    if role == "member":
        endpoint = config_snippet.AccountingEndpoint(cluster_name="alpha", region=REGION, host="10.250.0.11", port=6819)
        return config_snippet.render(config_snippet.member_config(FEDERATION, ARN, endpoint, settings),
                                     *config_snippet._member_comments(FEDERATION, endpoint, settings))
    return config_snippet.render(config_snippet.accounting_config(FEDERATION, ARN, settings),
                                 *config_snippet._accounting_comments(FEDERATION, settings))


def _load_with_parallelcluster(config: dict, monkeypatch):
    pcluster_schema = pytest.importorskip("pcluster.schemas.cluster_schema", reason="aws-parallelcluster not installed")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)  # pcluster's defaults read the region; no AWS call is made
    return pcluster_schema.ClusterSchema(cluster_name="beta").load(config)


def _failures(validator, **kwargs) -> list[str]:
    return [failure.message for failure in validator().execute(**kwargs)]


def test_parallelcluster_accepts_a_member_config_with_the_snippet(monkeypatch):
    from_yaml = yaml.safe_load(_rendered("member"))
    cluster = _load_with_parallelcluster(_merged(from_yaml, yaml.safe_load(MINIMAL_CLUSTER)), monkeypatch)
    from pcluster.validators import slurm_settings_validator as checks

    settings = cluster.scheduling.settings
    assert settings.munge_key_secret_arn == ARN
    assert (settings.external_slurmdbd.host, settings.external_slurmdbd.port) == ("10.250.0.11", 6819)
    assert settings.database is None
    assert _failures(checks.ExternalSlurmdbdRequiresCustomMungeKey, external_slurmdbd=settings.external_slurmdbd,
                     munge_key_secret_arn=settings.munge_key_secret_arn) == []
    assert _failures(checks.ExternalSlurmdbdVsDatabaseIncompatibility, database=settings.database,
                     external_slurmdbd=settings.external_slurmdbd) == []
    assert {tag.key: tag.value for tag in cluster.tags}["slurm-multicluster:federation"] == FEDERATION
    assert "slurm-multicluster:role" not in {tag.key for tag in cluster.tags}
    assert [p.policy for p in cluster.head_node.iam.additional_iam_policies] == [
        "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]


def test_parallelcluster_accepts_the_accounting_snippet_beside_the_admins_database(monkeypatch):
    base = yaml.safe_load(MINIMAL_CLUSTER)
    base["Scheduling"]["SlurmSettings"] = {"Database": DATABASE}
    cluster = _load_with_parallelcluster(_merged(yaml.safe_load(_rendered("accounting")), base), monkeypatch)
    settings = cluster.scheduling.settings
    assert settings.munge_key_secret_arn == ARN and settings.database.uri == DATABASE["Uri"]
    assert settings.external_slurmdbd is None


def test_parallelcluster_would_refuse_the_member_snippet_beside_a_database(monkeypatch):
    """Why the member snippet drops Database: the two cannot be combined (so a wrong merge is caught)."""
    base = yaml.safe_load(MINIMAL_CLUSTER)
    base["Scheduling"]["SlurmSettings"] = {"Database": DATABASE}
    cluster = _load_with_parallelcluster(_merged(yaml.safe_load(_rendered("member")), base), monkeypatch)
    from pcluster.validators import slurm_settings_validator as checks

    settings = cluster.scheduling.settings
    assert _failures(checks.ExternalSlurmdbdVsDatabaseIncompatibility, database=settings.database,
                     external_slurmdbd=settings.external_slurmdbd) != []


def test_the_member_snippet_puts_the_federation_security_group_on_the_head_node(monkeypatch):
    endpoint = config_snippet.AccountingEndpoint(cluster_name="alpha", region=REGION, host="10.250.0.11", port=6819)
    settings = Settings()
    snippet = config_snippet.member_config(FEDERATION, ARN, endpoint, settings, "sg-0123456789abcdef0")
    text = config_snippet.render(snippet, *config_snippet._member_comments(FEDERATION, endpoint, settings))
    assert "every SlurmQueues queue's Networking/AdditionalSecurityGroups" in text
    cluster = _load_with_parallelcluster(_merged(yaml.safe_load(text), yaml.safe_load(MINIMAL_CLUSTER)), monkeypatch)
    assert cluster.head_node.networking.additional_security_groups == ["sg-0123456789abcdef0"]
    assert config_snippet.SnippetRequest.model_validate(
        {"federation": FEDERATION, "region": REGION, "vpcId": "vpc-0123456789abcdef0"}).vpc_id == "vpc-0123456789abcdef0"


def test_with_srun_port_range_on_the_member_snippet_sets_it_and_parallelcluster_accepts_it(monkeypatch):
    endpoint = config_snippet.AccountingEndpoint(cluster_name="alpha", region=REGION, host="10.250.0.11", port=6819)
    settings = Settings(srun_port_range="60001-63000")
    snippet = config_snippet.member_config(FEDERATION, ARN, endpoint, settings)
    text = config_snippet.render(snippet, *config_snippet._member_comments(FEDERATION, endpoint, settings))
    assert "SrunPortRange option (interactive srun/salloc -M)" in text
    cluster = _load_with_parallelcluster(_merged(yaml.safe_load(text), yaml.safe_load(MINIMAL_CLUSTER)), monkeypatch)
    from pcluster.validators import slurm_settings_validator as checks

    custom = cluster.scheduling.settings.custom_slurm_settings
    assert custom == [{"SrunPortRange": "60001-63000"}]
    assert _failures(checks.CustomSlurmSettingsValidator, custom_settings=custom,
                     deny_list=checks.SLURM_SETTINGS_DENY_LIST["SlurmConf"]["Global"],
                     settings_level=checks.CustomSlurmSettingLevel.SLURM_CONF) == []
    off = config_snippet.member_config(FEDERATION, ARN, endpoint, Settings())
    assert "CustomSlurmSettings" not in off["Scheduling"]["SlurmSettings"]  # off by default: nothing to set


def test_the_snippet_follows_the_federations_srun_port_range_override(handler, moto):
    alpha = create_cluster(moto, "alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    declare_federation(REGION, FEDERATION, alpha.stack_id, srunPortRange="50001-50999")
    boto3.client("secretsmanager", region_name=REGION).create_secret(Name=SECRET, SecretString="a2V5")
    context = LambdaContext("GenerateConfigSnippetFunction", "arn:aws:lambda:us-east-1:123456789012:function:x")

    result = handler({"federation": FEDERATION, "region": REGION, "role": "accounting"}, context)

    assert result["config"]["Scheduling"]["SlurmSettings"]["CustomSlurmSettings"] == [{"SrunPortRange": "50001-50999"}]
