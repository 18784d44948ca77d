"""The drift sweep's plain functions: request validation, pairing run names, the report (workflow: tests/workflow)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from slurm_multicluster import errors, sweep
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput

REQUEST = {"dryRun": True, "trigger": "manual", "executionName": "sweep-1"}


def rule(group: str, target: str, source: str) -> dict:
    return {"region": "us-east-1", "groupId": group, "fromPort": 6820, "toPort": 6829, "sourceGroupId": f"sg-{source}",
            "targetCluster": target, "sourceCluster": source}


def plan(cluster: str, rules=(), key=False, accounting=None) -> dict:
    return {"clusterName": cluster, "alreadyPaired": not (rules or key or accounting), "ingressRules": list(rules),
            "mungeKey": {"installOnHead": key, "headKeyDiffers": key}, "accounting": accounting}


def result(cluster: str, the_plan=None, **kwargs) -> dict:
    return {"cluster": cluster, "federation": "hpc", "status": "SUCCEEDED" if the_plan else "FAILED",
            "plan": the_plan, **kwargs}


def test_the_schedule_and_a_manual_request_are_accepted():
    assert sweep.normalize({"trigger": "schedule", "dryRun": True}, "e1").dry_run is True
    manual = sweep.normalize({"federation": "hpc"}, "e2")
    assert (manual.dry_run, manual.federation, manual.trigger) == (False, "hpc", "manual")


@pytest.mark.parametrize("given", [None, "hpc", {"dryRun": "yes"}, {"dryRun": 1}, {"federation": "a b"},
                                   {"federation": "$(id)"}, {"trigger": "event"}, {"stackName": "beta"}])
def test_malformed_requests_are_refused(given):
    with pytest.raises(InvalidInput, match="invalid"):
        sweep.normalize(given, "e1")


def test_pairing_run_names_are_deterministic_valid_and_short():
    longest = "c" + "x" * 59
    name = sweep.pairing_execution_name("f" * 80, longest)
    assert name == sweep.pairing_execution_name("f" * 80, longest) != sweep.pairing_execution_name("g", longest)
    assert len(name) <= 80 and v.BACKUP_ID.fullmatch(name)


def test_a_half_paired_cluster_is_said_to_be_so_not_to_have_another_key():
    """Head node on the federation key, its shared copies and some nodes not (the key copied to the head by hand)."""
    half = {"clusterName": "beta", "alreadyPaired": False, "ingressRules": [], "accounting": None, "mungeKey": {
        "installOnHead": True, "headKeyDiffers": False, "installOnInstances": ["i-0123456789abcdef0", "i-1"],
        "staleSharedCopies": ["/opt/parallelcluster/shared/.munge/.munge.key"]}}
    assert sweep.drift_items(half, 0) == [
        "shared munge key copies not on the federation key: /opt/parallelcluster/shared/.munge/.munge.key",
        "2 compute/login nodes on another munge key"]
    only_nodes = {**half, "mungeKey": {"installOnHead": False, "headKeyDiffers": False,
                                       "installOnInstances": ["i-1"], "staleSharedCopies": []}}
    assert sweep.drift_items(only_nodes, 0) == ["1 compute/login node on another munge key"]


def test_each_drift_is_said_in_an_admins_words():
    accounting = {"change": True, "currentHost": "10.0.0.21", "currentPort": 6819, "host": "10.0.0.11", "port": 6819,
                  "stopLocalSlurmdbd": True}
    assert sweep.drift_items(plan("beta", key=True, accounting=accounting), 2) == [
        "2 missing ingress rules", "munge key differs", "accounting points at 10.0.0.21:6819 not 10.0.0.11:6819",
        "own slurmdbd still running"]
    unset = {"change": True, "currentHost": None, "currentPort": None, "host": "10.0.0.11", "port": 6819}
    assert sweep.drift_items(plan("beta", accounting=unset), 1) == [
        "1 missing ingress rule", "accounting points at no slurmdbd not 10.0.0.11:6819"]


def test_a_missing_rule_counts_once_on_the_cluster_whose_group_lacks_it():
    missing = rule("sg-beta", "beta", "alpha")  # in both clusters' plans
    given = sweep.ReportInput.model_validate({"request": REQUEST, "results": [
        result("beta", plan("beta", [missing])), result("alpha", plan("alpha", [missing]))]})
    report = sweep.report(given)
    assert report.in_sync == ["alpha"]
    assert [(d.cluster, d.drift) for d in report.drifted] == [("beta", ["1 missing ingress rule"])]
    assert report.repaired == []  # dryRun


def test_a_missing_prefix_list_entry_counts_once_on_the_member_whose_subnet_it_is():
    """Every member's plan holds the whole federation's network: beta's queue subnet missing from alpha's VPC's
    prefix list is in both plans, and is beta's drift."""
    network = {"vpcs": [{"region": "us-east-1", "vpcId": "vpc-alpha", "addEntries": ["10.241.2.0/24"],
                         "entrySources": {"10.241.2.0/24": "beta"}},
                        {"region": "eu-west-1", "vpcId": "vpc-beta", "addEntries": []}]}
    given = sweep.ReportInput.model_validate({"request": REQUEST, "results": [
        result("beta", {**plan("beta"), "network": network}), result("alpha", {**plan("alpha"), "network": network})]})
    report = sweep.report(given)
    assert report.in_sync == ["alpha"]
    assert [(d.cluster, d.drift) for d in report.drifted] == [
        ("beta", ["1 subnet missing from the other VPCs' prefix lists"])]


def test_without_dry_run_a_drifted_cluster_whose_run_succeeded_is_repaired_and_failures_are_lines():
    given = sweep.ReportInput.model_validate({
        "request": {**REQUEST, "dryRun": False},
        "unchecked": [{"cluster": "gamma", "region": "us-east-1", "error": "invalid tag"}],
        "results": [result("beta", plan("beta", key=True)),
                    result("delta", error="VerifyPairingFailed", cause='NodeCommandFailed: {"errorMessage": "slurmctld down", "stackTrace": []}')],
    })
    report = sweep.report(given)
    assert [(d.cluster, d.drift) for d in report.repaired] == [("beta", ["munge key differs"])]
    assert {f.cluster: f.error for f in report.failed} == {
        "gamma": "not checked: invalid tag", "delta": "VerifyPairingFailed: NodeCommandFailed: slurmctld down"}
    assert report.checked == ["beta", "delta"]


def test_the_report_counts_each_federations_checked_members_for_the_dashboard(capfd, monkeypatch):
    given = sweep.ReportInput.model_validate({
        "request": {**REQUEST, "dryRun": True},
        "results": [result("alpha", plan("alpha")), result("beta", plan("beta", key=True)),
                    {**result("lab1", plan("lab1")), "federation": "lab"},
                    result("delta", error="VerifyPairingFailed"),  # a failed check is no member the sweep saw work
                    {**result("gone", plan("gone")), "workflow": "unpairing"}],
    })
    report = sweep.report(given)
    assert report.members == {"hpc": 2, "lab": 1}  # in sync or drifted, not failed, not departed

    # PublishSweepReport emits one FederationMembers metric per federation, as the dashboard's search finds it
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "SlurmMulticluster")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "slurm-multicluster")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    import json
    import time

    from lab import cloud
    handler = cloud._handler("PublishSweepReportFunction", cloud.code_dir("PublishSweepReportFunction"),
                             "app.lambda_handler")
    context = cloud.LambdaContext("PublishSweepReportFunction", "arn:aws:lambda:us-east-1:123456789012:function:"
                                  "PublishSweepReportFunction", deadline=time.monotonic() + 30)
    with mock_aws():
        handler({"request": given.request.state(), "results": [r.state() for r in given.results]}, context)
    emf = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{") and '"_aws"' in line]
    counted = sorted((d["federation"], d[sweep.MEMBERS_METRIC]) for d in emf if sweep.MEMBERS_METRIC in d)
    assert counted == [("hpc", [2.0]), ("lab", [1.0])]  # EMF: a list per metric
    body = cloud.load_template()["Resources"]["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    assert r"""SEARCH('{SlurmMulticluster,federation,service} MetricName=\"FederationMembers\"'""" in body


def test_a_retried_start_finds_the_run_it_already_started(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine = sfn.create_state_machine(
            name="pairing", roleArn="arn:aws:iam::123456789012:role/x",
            definition='{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}')["stateMachineArn"]
        run = sweep.PairingRun.model_validate({
            "request": REQUEST, "cluster": {"cluster": "beta", "federation": "hpc", "region": "us-east-1"}})
        first = sweep.start_pairing_run(sfn, machine, run)
        again = sweep.start_pairing_run(sfn, machine, run)
        assert first.execution_arn == again.execution_arn
        assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 1


@pytest.mark.parametrize("cause,expected", [
    ('NodeCommandFailed: {"errorMessage": "slurmctld down", "errorType": "NodeCommandFailed", "stackTrace": ["  File x"]}',
     "NodeCommandFailed: slurmctld down"),
    ("States.Timeout: Task timed out.", "States.Timeout: Task timed out."),
    ("VerificationFailed: {not json", "VerificationFailed: {not json"),
])
def test_a_cause_is_quoted_without_the_lambda_error_payload(cause, expected):
    assert errors.concise(cause) == expected
