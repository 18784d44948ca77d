"""The product may run only its own node scripts: one SSM Command document per script, typed parameters whose
patterns SSM enforces before any node sees a value, and IAM that names only those documents."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from lab import cloud  # the SSM seam: moto runs documents as SSM does (notes/moto.md)
from slurm_multicluster import node_commands, ssm_documents
from slurm_multicluster.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "functions" / "shared" / "slurm_multicluster" / "node_scripts"
REGION = "us-east-1"
OUR_DOCUMENTS = "arn:${AWS::Partition}:ssm:*:${AWS::AccountId}:document/SlurmMulticluster-${DeploymentId}-*"

# values each parameter must accept (what the workflows send, and the edges of each range)
VALID = {
    "SecretId": ["slurm-multicluster/default/hpc/munge-key", "a",
                 "arn:aws:secretsmanager:us-east-1:123456789012:secret:slurm-multicluster/default/hpc/munge-key-AbCdEf"],
    "Region": ["us-east-1", "eu-central-1", "us-gov-west-1", "ap-southeast-4"],
    "VersionStage": ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"],
    "ExpectSha256": ["0" * 64, "ab" * 32],
    "BackupId": ["exec-9", "3f2c6a4e-7d1b-4c8e-9a0f-2b6d8e1c5a7f", "pairing-abc.def_1", "A" * 80],
    "Restart": ["slurmd", "slurmctld", "slurmdbd,slurmctld", "slurmdbd,slurmctld,slurmd"],
    "Hold": ["slurmctld"],
    "Deadline": ["1", "120", "999", "3600"],
    "VersionId": ["3f2c6a4e-7d1b-4c8e-9a0f-2b6d8e1c5a7f", "a" * 32, "A-" * 32],
    "KeyBytes": ["32", "99", "512", "1024"],
    "Host": ["10.0.1.20", "255.255.255.255", "ip-10-0-0-10", "head.example.com"],
    "Port": ["1", "6819", "9999", "65535"],
    "Cluster": ["beta", "my_cluster-2", "hpc-beta"],
    "Peers": ["alpha", "alpha,beta,gamma_1"],
    "Interval": ["1", "9", "60"],
    "Mode": ["encode", "decode"],
    "Credential": ["MUNGE:AwQFAABtq9A+/abc==:", "MUNGE:" + "A" * 8000 + ":"],
    "executionTimeout": ["1", "600", "99999"],
    "KeepBackups": ["1", "3", "10", "99"],
}
# values each parameter must refuse although they contain nothing hostile (the scripts' ranges and lists)
OUT_OF_RANGE = {
    "Deadline": ["0", "3601", "99999", "012"], "KeyBytes": ["31", "1025", "0"], "Port": ["0", "65536", "06819"],
    "Interval": ["0", "61"], "Restart": ["munge", "slurmd,", ",slurmd"], "Mode": ["encodex", "ENCODE"],
    "Hold": ["slurmd", "slurmdbd", "slurmctld,slurmd"],
    "VersionStage": ["AWSCURRENTX", "current"], "ExpectSha256": ["A" * 64, "0" * 63], "VersionId": ["a" * 31],
    "BackupId": ["-exec", "A" * 81], "Host": ["-host", "host-", "a..b"], "Credential": ["MUNGE::"],
    "Peers": ["alpha,", ",alpha"], "Region": ["US-EAST-1", "useast1"], "executionTimeout": ["123456"],
    "KeepBackups": ["0", "100", "03"],
}
HOSTILE = ["'", " ", "\n", "\t", "$(id)", "`id`", ";", "|", "&", "{", "}", "$", "{{ SecretId }}", "'; reboot; '"]


def _value_parameters() -> Iterator[tuple[str, ssm_documents.Parameter]]:
    for doc in ssm_documents.DOCUMENTS.values():
        for parameter in doc.parameters:
            if parameter.kind != "switch":
                yield doc.script, parameter
    yield "discover-slurm.sh", ssm_documents.EXECUTION_TIMEOUT_PARAMETER


VALUE_PARAMETERS = list(_value_parameters())
IDS = [f"{script}:{parameter.name}" for script, parameter in VALUE_PARAMETERS]


# ---------------------------------------------------------------- node-documents.yaml


def test_node_documents_yaml_is_the_generated_template():
    assert (REPO / "node-documents.yaml").read_text() == ssm_documents.template(), "run `make documents`"


def test_node_documents_yaml_holds_one_command_document_per_node_script():
    template = cloud.load_template(REPO / "node-documents.yaml")
    scripts = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")
    assert sorted(ssm_documents.DOCUMENTS) == scripts
    documents = {r["Properties"]["Name"]["Fn::Sub"]: r["Properties"] for r in template["Resources"].values()}
    for script, doc in ssm_documents.DOCUMENTS.items():
        props = documents[f"SlurmMulticluster-${{DeploymentId}}-{doc.suffix}"]
        assert (props["DocumentType"], props["DocumentFormat"], props["UpdateMethod"]) == ("Command", "JSON", "NewVersion")
        assert props["Content"] == ssm_documents.content(script)  # the YAML reads back as the document
    assert set(template["Outputs"]) == {f"{d.suffix}DocumentName" for d in ssm_documents.DOCUMENTS.values()}


def test_the_documents_stack_takes_the_deployment_id_template_yaml_takes():
    ours = cloud.load_template(REPO / "node-documents.yaml")["Parameters"]["DeploymentId"]["AllowedPattern"]
    main = cloud.load_template()
    assert ours == main["Parameters"]["DeploymentId"]["AllowedPattern"] == ssm_documents.DEPLOYMENT_ID_PATTERN
    nested = main["Resources"]["NodeDocuments"]
    assert nested["Type"] == "AWS::Serverless::Application"
    assert nested["Properties"] == {"Location": "node-documents.yaml", "Parameters": {"DeploymentId": {"Ref": "DeploymentId"}}}


@pytest.mark.parametrize("script", sorted(ssm_documents.DOCUMENTS))
def test_each_document_fits_ssm_s_64_kb_content_limit(script):
    assert len(json.dumps(ssm_documents.content(script)).encode("utf-8")) <= 64 * 1024


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_no_script_holds_a_parameter_reference_ssm_would_interpolate(script):
    assert "{{" not in (SCRIPTS / script).read_text()


@pytest.mark.parametrize("script", sorted(ssm_documents.DOCUMENTS))
def test_every_flag_a_script_parses_is_a_parameter_of_its_document(script):
    parsed = set(re.findall(r"^\s+(--[a-z0-9-]+)\)", (SCRIPTS / script).read_text(), re.M))
    flags = {p.flag for p in ssm_documents.document(script).parameters if p.flag}
    assert flags == parsed


def test_document_names_carry_the_deployment():
    assert ssm_documents.document_name("default", "install-munge-key.sh") == "SlurmMulticluster-default-InstallMungeKey"
    assert ssm_documents.script_of("SlurmMulticluster-prod-2-InstallMungeKey") == "install-munge-key.sh"
    with pytest.raises(InvalidInput):
        ssm_documents.document_name("Prod;id", "install-munge-key.sh")
    with pytest.raises(ValueError):
        ssm_documents.script_of("AWS-RunShellScript")


# ---------------------------------------------------------------- the parameters' patterns


def test_every_pattern_uses_only_portable_regex():
    for _, parameter in VALUE_PARAMETERS:
        pattern = parameter.allowed_pattern
        assert pattern.startswith("^") and pattern.endswith("$")
        assert not re.search(r"\\[dDwWsSbBzZAQE]|\(\?|\\p", pattern), pattern  # classes, groups, quantifiers, |
        re.compile(pattern)


@pytest.mark.parametrize(("script", "parameter"), VALUE_PARAMETERS, ids=IDS)
def test_each_pattern_accepts_what_the_workflows_send(script, parameter):
    for value in VALID[parameter.name]:
        assert parameter.accepts(value), value
    assert parameter.accepts("") is (not parameter.required)  # optional: empty is the default, not passed


@pytest.mark.parametrize(("script", "parameter"), VALUE_PARAMETERS, ids=IDS)
def test_each_pattern_refuses_hostile_values_anywhere_in_a_valid_one(script, parameter):
    valid = VALID[parameter.name][0]
    for hostile in HOSTILE:
        assert not parameter.accepts(hostile), hostile
        for at in range(len(valid) + 1):
            assert not parameter.accepts(valid[:at] + hostile + valid[at:]), (hostile, at)
    for value in OUT_OF_RANGE.get(parameter.name, []):
        assert not parameter.accepts(value), value


def test_switches_take_true_or_false_only():
    for doc in ssm_documents.DOCUMENTS.values():
        for parameter in doc.parameters:
            if parameter.kind == "switch":
                assert parameter.definition()["allowedValues"] == ["true", "false"]
                assert parameter.definition()["default"] == "false"
    assert ssm_documents.parameters("restore-backup.sh", {"BackupId": "b", "RestartFailed": True}) == {
        "BackupId": ["b"], "RestartFailed": ["true"]}
    with pytest.raises(ValueError):
        ssm_documents.parameters("restore-backup.sh", {"BackupId": "b", "RestartFailed": "yes"})


def test_python_validation_names_the_parameter():
    with pytest.raises(InvalidInput, match="BackupId"):
        ssm_documents.parameters("restore-backup.sh", {"BackupId": "x'; reboot; '"})
    with pytest.raises(InvalidInput, match="Credential for munge-credential.sh: <redacted>") as refused:
        ssm_documents.parameters("munge-credential.sh", {"Mode": "decode", "Credential": "MUNGE:abc;def:"})
    assert "abc" not in str(refused.value)  # a credential is never repeated, even a malformed one
    with pytest.raises(ValueError, match="no parameter 'Commands'"):
        ssm_documents.parameters("restore-backup.sh", {"BackupId": "b", "Commands": "id"})
    with pytest.raises(ValueError, match="needs BackupId"):
        ssm_documents.parameters("restore-backup.sh", {})


# ---------------------------------------------------------------- IAM


def _statements(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("Statement"), list):
            yield from node["Statement"]
        for value in node.values():
            yield from _statements(value)
    elif isinstance(node, list):
        for item in node:
            yield from _statements(item)


def _boundaries(node: Any) -> set[str]:
    """Logical ids used as permissions boundaries: a ceiling, not a grant."""
    if isinstance(node, dict):
        found = {node["PermissionsBoundary"]["Ref"]} if isinstance(node.get("PermissionsBoundary"), dict) else set()
        return found.union(*(_boundaries(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_boundaries(item) for item in node))
    return set()


def _grants(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every policy statement of the template that grants (its Globals and resources, not its boundaries)."""
    boundaries = _boundaries(template)
    yield from _statements(template.get("Globals", {}))
    for logical, resource in template.get("Resources", {}).items():
        if logical not in boundaries:
            yield from _statements(resource)


def _resources(statement: dict[str, Any]) -> list[str]:
    resources = statement.get("Resource", [])
    resources = resources if isinstance(resources, list) else [resources]
    return [r["Fn::Sub"] if isinstance(r, dict) and "Fn::Sub" in r else json.dumps(r) if isinstance(r, dict) else r
            for r in resources]


def _allows_send_command(statement: dict[str, Any]) -> bool:
    actions = statement.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    return statement.get("Effect") == "Allow" and any(
        fnmatch.fnmatch("ssm:sendcommand", str(a).lower()) for a in actions)


def test_the_functions_may_send_only_this_deployments_documents():
    send = [s for s in _grants(cloud.load_template()) if _allows_send_command(s)]
    assert [_resources(s) for s in send if any(":document/" in r for r in _resources(s))] == [[OUR_DOCUMENTS]]
    instances = [s for s in send if any(":instance/" in r for r in _resources(s))]
    assert len(instances) == 1 and instances[0]["Condition"] == {
        "StringLike": {"ssm:resourceTag/parallelcluster:cluster-name": "*"}}
    assert len(send) == 2  # nothing else may send a command (a "*" resource would be a third statement)


def test_no_policy_and_no_product_code_names_aws_run_shell_script():
    for path in (REPO / "template.yaml", REPO / "node-documents.yaml"):
        for statement in _statements(cloud.load_template(path)):
            assert "RunShellScript" not in json.dumps(statement)
        assert "AWS-RunShellScript" not in path.read_text()
    for path in (REPO / "functions").rglob("*"):
        if path.is_file() and path.suffix in (".py", ".sh", ".json"):
            assert "AWS-RunShellScript" not in path.read_text(), path


# ---------------------------------------------------------------- SendCommand through the seam


@pytest.fixture
def documents_in_moto(monkeypatch):
    """moto with the node documents deployed, one instance, and the SSM seam recording what reaches a node."""
    monkeypatch.setenv("DEPLOYMENT_ID", "default")
    with mock_aws():
        cloud.deploy_node_documents(REGION, {})
        ec2 = boto3.client("ec2", region_name=REGION)
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        reached: list[cloud.RunCommand] = []

        def node(command: cloud.RunCommand) -> tuple[int, str, str]:
            reached.append(command)
            return 0, '{"ok": true, "changed": false}\n', ""

        with cloud.ssm_runs_on(node, routable=lambda instance_id: True) as sent:
            yield boto3.client("ssm", region_name=REGION), instance, sent, reached


def test_a_script_is_sent_as_its_document_with_typed_parameters(documents_in_moto):
    ssm, instance, sent, reached = documents_in_moto
    results = node_commands.run_script(ssm, [instance], "set-accounting.sh",
                                       {"Host": "10.0.0.11", "Port": "6819", "BackupId": "exec-9",
                                        "StopLocalSlurmdbd": True}, timeout_seconds=300, comment="test")
    assert results[instance].ok
    assert sent[0]["DocumentName"] == "SlurmMulticluster-default-SetAccounting"
    assert sent[0]["Parameters"] == {"Host": ["10.0.0.11"], "Port": ["6819"], "BackupId": ["exec-9"],
                                     "StopLocalSlurmdbd": ["true"], "KeepBackups": ["3"], "executionTimeout": ["300"]}
    (command,) = reached
    assert command.timeout == 300  # executionTimeout is the step's timeoutSeconds
    assert command.parameters["StartLocalSlurmdbd"] == "false" and command.parameters["Deadline"] == ""  # defaults
    assert command.text.splitlines()[-1] == 'bash "$d/set-accounting.sh" "$@"'
    assert "[ -z '10.0.0.11' ] || set -- \"$@\" --host '10.0.0.11'" in command.text
    assert "{{" not in command.text


def test_a_refused_value_raises_invalid_input_and_sends_nothing(documents_in_moto):
    ssm, instance, sent, reached = documents_in_moto
    with pytest.raises(InvalidInput, match="Host"):
        node_commands.run_script(ssm, [instance], "set-accounting.sh",
                                 {"Host": "$(reboot)", "Port": "6819", "BackupId": "exec-9"},
                                 timeout_seconds=60, comment="test")
    assert sent == [] and reached == [] and ssm.list_commands()["Commands"] == []


@pytest.mark.parametrize(("document", "parameters", "error"), [
    ("SlurmMulticluster-default-SetAccounting", {"Host": ["10.0.0.1'; id; '"], "Port": ["6819"], "BackupId": ["b"]},
     "InvalidParameters"),
    ("SlurmMulticluster-default-SetAccounting", {"Host": ["10.0.0.1"], "Port": ["6819"], "BackupId": ["b"],
                                                 "StopLocalSlurmdbd": ["yes"]}, "InvalidParameters"),
    ("SlurmMulticluster-default-SetAccounting", {"Host": ["10.0.0.1"], "Port": ["6819"]}, "InvalidParameters"),
    ("SlurmMulticluster-default-SetAccounting", {"Host": ["10.0.0.1"], "Port": ["6819"], "BackupId": ["b"],
                                                 "commands": ["id"]}, "InvalidParameters"),
    ("SlurmMulticluster-default-MungeCredential", {"Mode": ["decode"], "Credential": ["MUNGE:x$(id):"]},
     "InvalidParameters"),
    ("AWS-RunShellScript", {"commands": ["id"]}, "InvalidDocument"),
    ("SlurmMulticluster-other-SetAccounting", {"Host": ["10.0.0.1"], "Port": ["6819"], "BackupId": ["b"]},
     "InvalidDocument"),
], ids=["quote-in-host", "switch-not-true-or-false", "missing-required", "unknown-parameter", "dollar-in-credential",
        "aws-run-shell-script", "another-deployment"])
def test_ssm_refuses_what_bypasses_python_validation_before_any_node_sees_it(documents_in_moto, document,
                                                                              parameters, error):
    ssm, instance, sent, reached = documents_in_moto
    with pytest.raises(ClientError) as refused:
        ssm.send_command(InstanceIds=[instance], DocumentName=document, Parameters=parameters)
    assert refused.value.response["Error"]["Code"] == error
    assert sent == [] and reached == []


def test_a_region_without_the_documents_is_reported_as_such(documents_in_moto):
    _, instance, sent, reached = documents_in_moto
    elsewhere = boto3.client("ssm", region_name="eu-west-1")
    with pytest.raises(node_commands.NodeUnreachable, match="node-documents.yaml"):
        node_commands.run_script(elsewhere, [instance], "discover-slurm.sh", {}, timeout_seconds=60, comment="test")
    assert reached == []
