"""The scripts run unchanged from their SSM documents: each document, rendered as SSM renders it (parameters
checked against the document, defaults filled, ``{{ Name }}`` interpolated), writes common.sh and the script
into a temp dir and runs it with the arguments its parameters stand for."""

from __future__ import annotations

import subprocess

import pytest

ssm_documents = pytest.importorskip("slurm_multicluster.ssm_documents")
node_commands = pytest.importorskip("slurm_multicluster.node_commands")
cloud = pytest.importorskip("lab.cloud")


def run_as_ssm(node, script: str, parameters: dict[str, str | bool]) -> subprocess.CompletedProcess:
    """Render the script's document with ``parameters`` as SSM does and run the text with sh, as the agent does."""
    sent = ssm_documents.parameters(script, parameters)
    _, text, timeout = cloud.render_document(f"SlurmMulticluster-test-{ssm_documents.document(script).suffix}",
                                             "Command", ssm_documents.content(script), sent)
    return subprocess.run(["sh", "-c", text], env=node.env, capture_output=True, text=True, timeout=timeout)


def test_discover_runs_from_its_document(node):
    proc = run_as_ssm(node, "discover-slurm.sh", {})
    assert proc.returncode == 0, proc.stderr
    facts = node_commands.parse_result(proc.stdout)
    assert facts["ok"] is True and facts["clusterName"] == "alpha"


def test_set_accounting_runs_from_its_document_with_its_parameters(node):
    proc = run_as_ssm(node, "set-accounting.sh", {"Host": "10.0.1.20", "Port": "6819", "BackupId": "exec-9"})
    assert proc.returncode == 0, proc.stderr
    assert node_commands.parse_result(proc.stdout)["changed"] is True
    assert "AccountingStorageHost=10.0.1.20\n" in (node.etc / "slurm_parallelcluster.conf").read_text()


def test_a_switch_parameter_becomes_the_scripts_flag(node):
    # RestartFailed=true is --restart-failed: without a backup the script still reports what it restarted
    proc = run_as_ssm(node, "restore-backup.sh", {"BackupId": "exec-none", "RestartFailed": True})
    assert proc.returncode == 0, proc.stderr
    result = node_commands.parse_result(proc.stdout)
    assert result["ok"] is True and result["found"] is False and "restarted" in result


def test_munge_credential_encode_and_decode_run_from_one_document(node):
    encoded = node_commands.parse_result(run_as_ssm(node, "munge-credential.sh", {"Mode": "encode"}).stdout)
    assert encoded["ok"] is True, encoded
    decoded = run_as_ssm(node, "munge-credential.sh", {"Mode": "decode", "Credential": encoded["credential"]})
    assert node_commands.parse_result(decoded.stdout)["decoded"] is True, decoded.stderr


@pytest.mark.parametrize("script", sorted(ssm_documents.DOCUMENTS))
def test_every_document_passes_exactly_the_arguments_its_parameters_stand_for(script, tmp_path):
    """The shell lines that build "$@" agree with ssm_documents.arguments (which the simulated nodes use)."""
    doc = ssm_documents.document(script)
    given: dict[str, str | bool] = {}
    for parameter in doc.parameters:
        if parameter.kind == "switch":
            given[parameter.name] = True
        else:
            given[parameter.name] = SAMPLE[parameter.name]
    sent = ssm_documents.parameters(script, given)
    values, text, _ = cloud.render_document("SlurmMulticluster-test-X", "Command", ssm_documents.content(script), sent)
    # the same text, with bash replaced by a printer of its arguments
    text = text.replace(f'bash "$d/{script}" "$@"', 'for a in "$@"; do printf \'%s\\n\' "$a"; done')
    proc = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ssm_documents.arguments(script, values)


SAMPLE = {
    "SecretId": "arn:aws:secretsmanager:us-east-1:123456789012:secret:slurm-multicluster/default/hpc/munge-key-AbC",
    "Region": "us-east-1", "VersionStage": "AWSPENDING", "ExpectSha256": "0" * 64, "BackupId": "exec-9",
    "Restart": "slurmdbd,slurmctld", "Hold": "slurmctld", "Deadline": "120", "VersionId": "a" * 36, "KeyBytes": "1024",
    "Host": "10.0.1.20", "Port": "6819", "Cluster": "beta", "Peers": "alpha,beta", "Interval": "1",
    "Mode": "decode", "Credential": "MUNGE:AwQFAAB=:", "KeepBackups": "3",
}


def test_a_value_the_document_admits_but_the_script_refuses_ends_as_a_json_error(node):
    # 999.1.1.1 fits the host-name pattern; the script's own check (an all-numeric name must be an IPv4
    # address) refuses it: exit 2, nothing changed
    before = node.snapshot()
    proc = run_as_ssm(node, "set-accounting.sh", {"Host": "999.1.1.1", "Port": "6819", "BackupId": "exec-9"})
    assert proc.returncode == 2
    result = node_commands.parse_result(proc.stdout)
    assert result["ok"] is False and "--host" in result["error"]
    assert node.snapshot() == before
