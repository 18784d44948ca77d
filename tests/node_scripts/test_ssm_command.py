"""The scripts run unchanged through the SSM seam: node_commands writes common.sh and the script into a temp dir."""

from __future__ import annotations

import subprocess

import pytest

node_commands = pytest.importorskip("slurm_multicluster.node_commands")


def run_as_ssm(node, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run the exact AWS-RunShellScript text with sh, as SSM (and the lab) do."""
    command = node_commands.build_command(script, args)
    return subprocess.run(["sh", "-c", command], env=node.env, capture_output=True, text=True, timeout=120)


def test_discover_runs_from_the_ssm_command_text(node):
    proc = run_as_ssm(node, "discover-slurm.sh", [])
    assert proc.returncode == 0, proc.stderr
    facts = node_commands.parse_result(proc.stdout)
    assert facts["ok"] is True and facts["clusterName"] == "alpha"


def test_set_accounting_runs_from_the_ssm_command_text_with_quoted_arguments(node):
    proc = run_as_ssm(node, "set-accounting.sh", ["--host", "10.0.1.20", "--port", "6819", "--backup-id", "exec-9"])
    assert proc.returncode == 0, proc.stderr
    assert node_commands.parse_result(proc.stdout)["changed"] is True
    assert "AccountingStorageHost=10.0.1.20\n" in (node.etc / "slurm_parallelcluster.conf").read_text()


def test_a_refused_value_reaches_the_lambda_as_a_json_error(node):
    before = node.snapshot()
    proc = run_as_ssm(node, "set-accounting.sh", ["--host", "$(reboot)", "--port", "6819", "--backup-id", "exec-9"])
    assert proc.returncode == 2
    result = node_commands.parse_result(proc.stdout)
    assert result["ok"] is False and "--host" in result["error"]
    assert node.snapshot() == before
