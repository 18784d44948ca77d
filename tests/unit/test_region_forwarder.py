"""region-forwarder.yaml (issue 9, members in other regions): generated from template.yaml's trigger rules, never
edited by hand; its rules are the home patterns themselves; its role may put events on the home bus and nothing
else. (tests/workflow/test_member_regions.py runs it in moto.)"""

from __future__ import annotations

import copy

import pytest

from lab.cloud import REPO, load_template
from slurm_multicluster import validation
from tools import region_forwarder

HOME = load_template()
FORWARDER_PATH = REPO / "region-forwarder.yaml"
FORWARDER = load_template(FORWARDER_PATH)
HOME_BUS = {"Fn::Sub": region_forwarder.HOME_BUS}


def _rules() -> dict[str, dict]:
    return {n: r["Properties"] for n, r in FORWARDER["Resources"].items() if r["Type"] == "AWS::Events::Rule"}


def test_the_checked_in_forwarder_is_what_make_forwarder_generates_from_the_current_template():
    assert FORWARDER_PATH.read_text() == region_forwarder.template(), \
        "template.yaml's trigger rules changed: run `make forwarder` and commit region-forwarder.yaml"


def test_every_home_trigger_about_stacks_is_forwarded_by_exactly_one_rule_holding_a_home_pattern_verbatim():
    home = [(f"{machine}.{name}", pattern) for machine, name, pattern in region_forwarder.trigger_rules(HOME)]
    about_stacks = [(where, p) for where, p in home if p["source"] != ["aws.ssm"]]
    assert {where for where, _ in about_stacks} >= {"PairingStateMachine.ClusterCreatedOrUpdated",
                                                   "UnpairingStateMachine.ClusterDeleting",
                                                   "UnpairingStateMachine.ClusterUpdated",
                                                   "PairingStateMachine.FederationTagChanged"}
    forwarded = [rule["EventPattern"] for rule in _rules().values()]
    for pattern in forwarded:
        assert pattern in [p for _, p in about_stacks], f"not a home pattern: {pattern}"
    for where, pattern in about_stacks:
        covering = [p for p in forwarded if region_forwarder.covers(p, pattern)]
        assert len(covering) == 1, f"{where} is forwarded by {len(covering)} rules"


def test_the_registry_rules_stay_home_and_a_trigger_of_any_other_source_must_be_decided():
    registry = [p for _, _, p in region_forwarder.trigger_rules(HOME) if p["source"] == ["aws.ssm"]]
    assert registry and all("Fn::Sub" in p["detail"]["name"][0]["prefix"] for p in registry)
    assert not any(rule["EventPattern"]["source"] == ["aws.ssm"] for rule in _rules().values())
    changed = copy.deepcopy(HOME)
    changed["Resources"]["PairingStateMachine"]["Properties"]["Events"]["InstanceStopped"] = {
        "Type": "EventBridgeRule", "Properties": {"Pattern": {"source": ["aws.ec2"]}}}
    with pytest.raises(ValueError, match="neither forwarded nor home-only"):
        region_forwarder.forwarded_rules(changed)


def test_home_patterns_accept_forwarded_events_they_name_no_region_or_account():
    for machine, name, pattern in region_forwarder.trigger_rules(HOME):
        assert not {"region", "account"} & set(pattern), f"{machine}.{name} would drop events of other regions"


def test_each_rule_targets_only_the_home_regions_default_bus_through_the_forwarding_role():
    assert _rules()
    for name, rule in _rules().items():
        assert rule["EventBusName"] == "default" and rule["State"] == "ENABLED", name
        assert rule["Targets"] == [{"Id": "home-region-default-bus", "Arn": HOME_BUS,
                                    "RoleArn": {"Fn::GetAtt": ["ForwardingRole", "Arn"]}}], name


def test_the_forwarding_role_may_put_events_on_the_home_bus_and_nothing_else():
    roles = {n: r["Properties"] for n, r in FORWARDER["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert list(roles) == ["ForwardingRole"]
    role = roles["ForwardingRole"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [{
        "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    assert statements == [{"Effect": "Allow", "Action": "events:PutEvents", "Resource": HOME_BUS}]
    assert "ManagedPolicyArns" not in role


def test_it_refuses_to_be_deployed_in_the_home_region_and_takes_the_home_stacks_tag_key():
    assertion = FORWARDER["Rules"]["NotTheHomeRegion"]["Assertions"][0]["Assert"]
    assert assertion == {"Fn::Not": [{"Fn::Equals": [{"Ref": "HomeRegion"}, {"Ref": "AWS::Region"}]}]}
    assert FORWARDER["Parameters"]["FederationTagKey"]["Default"] == HOME["Parameters"]["FederationTagKey"]["Default"]
    assert FORWARDER["Parameters"]["HomeRegion"]["AllowedPattern"] == validation.REGION.pattern
