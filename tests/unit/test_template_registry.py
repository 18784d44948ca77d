"""template.yaml: only administrators write the registry; the workflows read it and react to its changes."""

from __future__ import annotations

import json

from lab.cloud import load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
REGISTRY_WRITES = {"ssm:PutParameter", "ssm:DeleteParameter", "ssm:DeleteParameters", "ssm:LabelParameterVersion",
                   "ssm:UnlabelParameterVersion", "ssm:AddTagsToResource", "ssm:*", "*"}


def _statements(policies) -> list[dict]:
    found = []
    for policy in policies or []:
        if isinstance(policy, dict) and "Statement" in policy:
            found += policy["Statement"]
        elif isinstance(policy, dict) and "Ref" in policy:
            found += RESOURCES[policy["Ref"]]["Properties"]["PolicyDocument"]["Statement"]
    return found


def _actions(statement) -> set[str]:
    actions = statement.get("Action", [])
    return {actions} if isinstance(actions, str) else set(actions)


def _functions():
    return {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}


def test_no_function_can_write_the_registry():
    for name, function in _functions().items():
        for statement in _statements(function["Properties"].get("Policies")):
            if statement.get("Effect", "Allow") == "Allow":
                assert not _actions(statement) & REGISTRY_WRITES, f"{name} may write parameters: {statement}"


def test_the_administrator_policy_writes_this_deployments_registry_only():
    policy = RESOURCES["FederationAdministratorPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    writes = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if _actions(s) & REGISTRY_WRITES]
    assert len(writes) == 1
    resources = json.dumps(writes[0]["Resource"])
    assert "parameter/slurm-multicluster/${DeploymentId}/federations" in resources
    assert "parameter/*" not in resources and '"*"' not in resources
    assert "FederationAdministratorPolicyArn" in TEMPLATE["Outputs"]


def test_the_workflows_read_the_registry_and_nothing_else_of_parameter_store():
    read = RESOURCES["RegistryReadPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert {a for s in read for a in _actions(s)} == {"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"}
    assert all("/slurm-multicluster/${DeploymentId}/federations" in json.dumps(s["Resource"]) for s in read)
    readers = {name for name, f in _functions().items()
               if {"Ref": "RegistryReadPolicy"} in (f["Properties"].get("Policies") or [])}
    assert {"NormalizeTriggerFunction", "DiscoverFederationFunction", "DiscoverDepartureFunction",
            "DiscoverRemainingMembersFunction", "DiscoverFederationMembersFunction", "ListTaggedClustersFunction",
            "StartDueRotationsFunction"} <= readers


def test_registry_changes_reach_the_pairing_and_the_unpairing():
    for machine in ("PairingStateMachine", "UnpairingStateMachine"):
        rule = RESOURCES[machine]["Properties"]["Events"]["RegistryChanged"]["Properties"]["Pattern"]
        assert rule["source"] == ["aws.ssm"] and rule["detail-type"] == ["Parameter Store Change"]
        assert rule["detail"]["name"] == [{"prefix": {"Fn::Sub": "/slurm-multicluster/${DeploymentId}/federations/"}}]


def test_the_accounting_role_is_no_tag_any_more():
    assert "RoleTagKey" not in TEMPLATE["Parameters"]
    assert "ROLE_TAG_KEY" not in json.dumps(TEMPLATE)
    assert "RotationFederation" not in TEMPLATE["Parameters"]  # rotation schedules are per federation, in the registry


def test_only_the_starters_may_start_executions():
    starters = {name for name, f in _functions().items()
                for s in _statements(f["Properties"].get("Policies")) if "states:StartExecution" in _actions(s)}
    assert starters == {"StartPairingRunFunction", "StartEvictionRotationFunction", "StartDueRotationsFunction"}


def test_every_workflow_has_a_failed_execution_alarm_on_the_alarm_topic():
    for machine in ("PairingStateMachine", "RotationStateMachine", "UnpairingStateMachine", "SweepStateMachine"):
        alarm = RESOURCES[machine.replace("StateMachine", "") + "FailedAlarm"]["Properties"]
        assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/States", "ExecutionsFailed")
        assert alarm["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": machine}}]
        assert alarm["AlarmActions"]["Fn::If"][0] == "HasAlarmTopic"
    dashboard = json.dumps(RESOURCES["OperationsDashboard"]["Properties"]["DashboardBody"])
    for metric in ("RollbackIncomplete", "AccountingClusterLost", "ClusterNotAdmitted", "ExecutionsFailed"):
        assert metric in dashboard
