"""The checkov findings template.yaml skips (`make lint` runs checkov): each skip says why in place, and the facts its
reason rests on hold in the template itself."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from lab.cloud import REPO, load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
TEMPLATES = {"template.yaml": TEMPLATE, "node-documents.yaml": load_template(REPO / "node-documents.yaml")}


def _skips(resource: dict[str, Any]) -> dict[str, str]:
    """check id -> comment of a resource's `Metadata: {checkov: {skip: [...]}}`."""
    return {s["id"]: s.get("comment", "") for s in (resource.get("Metadata") or {}).get("checkov", {}).get("skip", [])}


ALL_SKIPS = [(f"{file}:{name}", skip) for file, template in TEMPLATES.items()
             for name, resource in template["Resources"].items()
             for skip in (resource.get("Metadata") or {}).get("checkov", {}).get("skip", [])]


def _state_machines() -> dict[str, dict[str, Any]]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::StateMachine"}


def test_some_findings_are_skipped_and_none_by_a_bare_skip():
    assert ALL_SKIPS
    for where, skip in ALL_SKIPS:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip.get("id", "")), f"{where}: {skip}"
        assert len(str(skip.get("comment", "")).split()) >= 6, f"{where} skips {skip.get('id')} without a reason"


def test_skips_live_on_resources_only_never_on_the_template_or_globals():
    assert "checkov" not in json.dumps(TEMPLATE.get("Globals", {})) and "Metadata" not in TEMPLATE


def test_log_groups_that_skip_kms_receive_only_error_names_never_execution_data():
    skipping = {name for name, r in RESOURCES.items() if "CKV_AWS_158" in _skips(r)}
    assert skipping
    for name, machine in _state_machines().items():
        logging = machine["Properties"]["Logging"]
        groups = {d["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0] for d in logging["Destinations"]}
        if groups & skipping:
            assert logging["Level"] == "ERROR" and logging["IncludeExecutionData"] is False, name
        skipping -= groups
    assert not skipping, f"log groups skipping CKV_AWS_158 that no state machine writes: {skipping}"


def test_functions_that_skip_a_dlq_because_a_state_machine_calls_them_have_no_other_trigger():
    substitutions = json.dumps([m["Properties"]["DefinitionSubstitutions"] for m in _state_machines().values()])
    for name, resource in RESOURCES.items():
        reason = _skips(resource).get("CKV_AWS_116", "")
        if "state machine" in reason:
            assert f'"{name}", "Arn"' in substitutions, f"{name}: no state machine invokes it"
            assert not resource["Properties"].get("Events"), f"{name} is also invoked asynchronously"


@pytest.mark.parametrize("name", sorted(n for n, r in RESOURCES.items() if "CKV_AWS_173" in _skips(r)))
def test_functions_that_skip_environment_encryption_hold_no_secret_in_their_environment(name):
    environment = [TEMPLATE["Globals"]["Function"].get("Environment", {}),
                   RESOURCES[name]["Properties"].get("Environment", {})]
    text = json.dumps(environment)
    assert "{{resolve:" not in text, f"{name}: a dynamic reference (secret) in its environment"
    no_echo = {p for p, spec in TEMPLATE["Parameters"].items() if str(spec.get("NoEcho", "")).lower() == "true"}
    assert not {p for p in no_echo if json.dumps({"Ref": p}) in text}, f"{name}: a NoEcho parameter in its environment"
