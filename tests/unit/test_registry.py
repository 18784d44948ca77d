"""The federation registry: what admits a stack (and what never does), and the registry's change events."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import registry
from slurm_multicluster.errors import InvalidInput, PrerequisiteFailed
from slurm_multicluster.settings import Settings
from slurm_multicluster.triggers import normalize

REGION = "us-east-1"
ACCOUNT = "123456789012"
ALPHA = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/alpha/0ed3d1b4-641b-4e9e-a689-acdbf4690358"
BETA = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/beta/5b7a1a10-0b7e-11ef-9a0b-0a1b2c3d4e5f"
CONFIG = Settings(deployment_id="prod", deployment_region=REGION)
ROOT = "/slurm-multicluster/prod/federations"


@pytest.fixture
def ssm(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        yield boto3.client("ssm", region_name=REGION)


def _put(ssm, name, value):
    ssm.put_parameter(Name=name, Value=value if isinstance(value, str) else json.dumps(value), Type="String",
                      Overwrite=True)


def test_nothing_is_admitted_where_nothing_is_declared(ssm):
    assert registry.federation(ssm, CONFIG, "hpc") is None
    with pytest.raises(PrerequisiteFailed, match="federation hpc is not declared.*/slurm-multicluster/prod/federations/hpc/settings"):
        registry.declared(lambda service, region: ssm, CONFIG, "hpc")


def test_the_declaration_names_the_accounting_cluster_by_its_stack_arn(ssm):
    _put(ssm, f"{ROOT}/hpc/settings", {"accountingStackArn": ALPHA, "rotationDays": 30})
    hpc = registry.federation(ssm, CONFIG, "hpc")
    assert hpc.is_accounting(ALPHA) and not hpc.is_accounting(BETA)
    assert hpc.admission(ALPHA) == "declared as the federation's accounting cluster"
    assert hpc.admission(BETA) is None
    assert hpc.declaration.rotation_days == 30


def test_a_member_entry_admits_exactly_its_stack(ssm):
    _put(ssm, f"{ROOT}/hpc/settings", {"accountingStackArn": ALPHA})
    _put(ssm, registry.member_parameter(CONFIG, "hpc", BETA), BETA)
    hpc = registry.federation(ssm, CONFIG, "hpc")
    assert hpc.admission(BETA) == "admitted by its stack ARN"
    recreated = BETA[:-36] + "11111111-2222-3333-4444-555555555555"  # same name, re-created: another StackId
    elsewhere = BETA.replace(REGION, "eu-west-1")
    other_account = BETA.replace(ACCOUNT, "999999999999")
    assert [hpc.admission(arn) for arn in (recreated, elsewhere, other_account)] == [None, None, None]


def test_a_member_entry_whose_value_is_not_the_stack_its_path_names_admits_nothing(ssm):
    _put(ssm, f"{ROOT}/hpc/settings", {"accountingStackArn": ALPHA})
    _put(ssm, registry.member_parameter(CONFIG, "hpc", BETA), ALPHA.replace("alpha", "gamma"))
    assert registry.federation(ssm, CONFIG, "hpc").members == []


def test_admission_rules_match_account_region_and_name_pattern(ssm):
    _put(ssm, f"{ROOT}/hpc/settings", {"accountingStackArn": ALPHA})
    _put(ssm, f"{ROOT}/hpc/admission-rules/ab-clusters", {"account": ACCOUNT, "region": REGION, "stackNamePattern": "be*"})
    hpc = registry.federation(ssm, CONFIG, "hpc")
    assert hpc.admission(BETA) == "admitted by admission rule ab-clusters"
    assert hpc.admission(BETA.replace("/beta/", "/Beta/")) is None  # case-sensitive, as stack names are
    assert hpc.admission(BETA.replace(REGION, "us-west-2")) is None
    assert hpc.admission(BETA.replace(ACCOUNT, "999999999999")) is None


@pytest.mark.parametrize("entry", [
    {"account": ACCOUNT, "region": REGION, "stackNamePattern": "be*; rm -rf /"},
    {"account": "12345", "region": REGION, "stackNamePattern": "*"},
    {"account": ACCOUNT, "region": "mars", "stackNamePattern": "*"},
    {"account": ACCOUNT, "region": REGION, "stackNamePattern": "*", "admitEverything": True},
    "not json",
])
def test_an_invalid_admission_rule_admits_nothing(ssm, entry):
    _put(ssm, f"{ROOT}/hpc/settings", {"accountingStackArn": ALPHA})
    _put(ssm, f"{ROOT}/hpc/admission-rules/bad", entry)
    assert registry.federation(ssm, CONFIG, "hpc").admission(BETA) is None


@pytest.mark.parametrize("settings", [
    {"accountingStackArn": "alpha"},
    {"accountingStackArn": ALPHA, "rotationDays": 0},
    {"accountingStackArn": ALPHA, "members": [BETA]},
    {},
    "[]",
])
def test_an_invalid_declaration_declares_nothing(ssm, settings):
    _put(ssm, f"{ROOT}/hpc/settings", settings)
    _put(ssm, registry.member_parameter(CONFIG, "hpc", BETA), BETA)
    assert registry.federation(ssm, CONFIG, "hpc") is None


def test_another_deployments_registry_is_not_read(ssm):
    _put(ssm, "/slurm-multicluster/test/federations/hpc/settings", {"accountingStackArn": ALPHA})
    assert registry.federations(ssm, CONFIG) == []
    assert [f.name for f in registry.federations(ssm, CONFIG.model_copy(update={"deployment_id": "test"}))] == ["hpc"]


def test_the_federations_own_settings_override_the_deployments(ssm):
    _put(ssm, f"{ROOT}/hpc/settings", {"accountingStackArn": ALPHA, "stopMemberSlurmdbd": False,
                                       "unpairRemovesAccounting": True})
    _put(ssm, f"{ROOT}/lab/settings", {"accountingStackArn": BETA})
    by_name = {f.name: f.settings(CONFIG) for f in registry.federations(ssm, CONFIG)}
    assert (by_name["hpc"].stop_member_slurmdbd, by_name["hpc"].unpair_removes_accounting) == (False, True)
    assert (by_name["lab"].stop_member_slurmdbd, by_name["lab"].unpair_removes_accounting) == (True, False)


# ---------------------------------------------------------------- registry change events


def _change(name, operation, account=ACCOUNT):
    return {"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602", "detail-type": "Parameter Store Change",
            "source": "aws.ssm", "account": account, "time": "2026-12-02T03:00:00Z", "region": REGION,
            "resources": [f"arn:aws:ssm:{REGION}:{account}:parameter{name}"],
            "detail": {"operation": operation, "name": name, "type": "String", "description": ""}}


def test_admitting_a_member_pairs_it_and_revoking_it_unpairs_it():
    name = registry.member_parameter(CONFIG, "hpc", BETA)
    admitted = normalize(_change(name, "Create"), "exec-1", deployment_id="prod")
    assert (admitted.action, admitted.stack_id, admitted.stack_name, admitted.trigger) == ("pair", BETA, "beta", "admitted")
    revoked = normalize(_change(name, "Delete"), "exec-2", "unpairing", deployment_id="prod")
    assert (revoked.action, revoked.stack_id, revoked.federation, revoked.trigger) == ("unpair", BETA, "hpc", "revoked")


def test_declaring_a_federation_pairs_its_accounting_cluster():
    name = f"{ROOT}/hpc/settings"
    request = normalize(_change(name, "Create"), "exec-1", deployment_id="prod",
                        read_parameter=lambda n: json.dumps({"accountingStackArn": ALPHA}) if n == name else None)
    assert (request.action, request.stack_id, request.trigger) == ("pair", ALPHA, "declared")


@pytest.mark.parametrize("name", [
    "/slurm-multicluster/other/federations/hpc/members/us-east-1/beta/5b7a1a10-0b7e-11ef-9a0b-0a1b2c3d4e5f",
    f"{ROOT}/hpc/admission-rules/all",
    "/unrelated/parameter",
])
def test_other_registry_changes_start_nothing(name):
    assert normalize(_change(name, "Delete"), "exec-1", "unpairing", deployment_id="prod").action == "ignore"


@pytest.mark.parametrize("name", [
    f"{ROOT}/hpc/members/us-east-1/beta;reboot/5b7a1a10-0b7e-11ef-9a0b-0a1b2c3d4e5f",
    f"{ROOT}/$(id)/members/us-east-1/beta/5b7a1a10-0b7e-11ef-9a0b-0a1b2c3d4e5f",
])
def test_hostile_registry_paths_start_nothing_that_changes_anything(name):
    assert normalize(_change(name, "Delete"), "exec-1", "unpairing", deployment_id="prod").action == "ignore"


def test_a_change_event_with_a_hostile_account_is_refused():
    with pytest.raises(InvalidInput):
        normalize(_change(registry.member_parameter(CONFIG, "hpc", BETA), "Delete", account="1; id"), "x",
                  deployment_id="prod")


# ---------------------------------------------------------------- the samples an administrator starts from

EVENTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "events"


def test_every_sample_in_events_is_accepted_by_what_reads_it():
    from slurm_multicluster import config_snippet, rotation, sweep

    readers = {
        "manual-pair.json": lambda e: normalize(e, "x"),
        "manual-pair-dry-run.json": lambda e: normalize(e, "x"),
        "manual-unpair.json": lambda e: normalize(e, "x", "unpairing"),
        "stack-create-complete.json": lambda e: normalize(e, "x"),
        "registry-member-admitted.json": lambda e: normalize(e, "x"),
        "manual-rotate.json": lambda e: rotation.normalize(
            e, "x", "arn:aws:states:us-east-1:123456789012:execution:rotation:x"),
        "manual-sweep.json": lambda e: sweep.normalize(e, "x"),
        "config-snippet.json": config_snippet.SnippetRequest.model_validate,
        "federation-settings.json": registry.Declaration.model_validate,  # aws ssm put-parameter --value file://...
        "admission-rule.json": registry.AdmissionRule.model_validate,
    }
    assert sorted(readers) == sorted(p.name for p in EVENTS.glob("*.json")), "a sample without a reader, or the reverse"
    for name, read in readers.items():
        read(json.loads((EVENTS / name).read_text()))
    admitted = normalize(json.loads((EVENTS / "registry-member-admitted.json").read_text()), "x")
    assert (admitted.action, admitted.stack_name) == ("pair", "beta")
