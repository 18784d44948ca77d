"""region-forwarder.yaml: what each other FederationRegions region needs so that its clusters start the workflows.

EventBridge rules are regional: a cluster created in us-west-2 emits its CloudFormation and tag events on
us-west-2's default bus only, where template.yaml's rules (in the deployment region) never see them. This stack,
deployed once in each other region, holds one rule per distinct trigger pattern of template.yaml, targeting the
deployment region's default bus, where the home rules match the forwarded events (they keep their ``source`` and
``region``; the home patterns name neither region nor account).

The patterns are copied from template.yaml's EventBridgeRule events here, never by hand (``make forwarder``;
tests/unit/test_region_forwarder.py fails when the file and template.yaml drift apart). Forwarded: events about
stacks (FORWARDED_SOURCES), which are emitted where the stack lives. Not forwarded: the registry's Parameter
Store changes, which happen in the deployment region itself.

    python -m tools.region_forwarder > region-forwarder.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lab.cloud import REPO, load_template
from slurm_multicluster import validation as v

FORWARDED_SOURCES = ("aws.cloudformation", "aws.tag")
HOME_ONLY_SOURCES = ("aws.ssm",)  # the registry lives in the deployment region's Parameter Store
HOME_BUS = "arn:${AWS::Partition}:events:${HomeRegion}:${AWS::AccountId}:event-bus/default"


def trigger_rules(template: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(state machine, event name, pattern) of every EventBridgeRule event of the template's state machines."""
    return [(machine, name, event["Properties"]["Pattern"])
            for machine, resource in template["Resources"].items()
            if resource["Type"] == "AWS::Serverless::StateMachine"
            for name, event in resource["Properties"].get("Events", {}).items()
            if event["Type"] == "EventBridgeRule"]


def _sources(pattern: dict[str, Any]) -> list[str]:
    return list(pattern.get("source", []))


def covers(broad: Any, narrow: Any) -> bool:
    """Does every event ``narrow`` matches also match ``broad``? (Sound, not complete: each field of ``broad`` must be
    in ``narrow``, nested alike, with each of narrow's alternatives among broad's.)"""
    if isinstance(broad, dict) and isinstance(narrow, dict):
        return all(key in narrow and covers(value, narrow[key]) for key, value in broad.items())
    if isinstance(broad, list) and isinstance(narrow, list):
        alternatives = {json.dumps(item, sort_keys=True) for item in broad}
        return all(json.dumps(item, sort_keys=True) in alternatives for item in narrow)
    return False


def forwarded_rules(template: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Forwarder rule name -> (pattern, the home rules it serves): the fewest of the home patterns themselves that
    cover every home trigger about stacks, so each such event crosses once per rule that matches it."""
    home = []
    for machine, name, pattern in trigger_rules(template):
        sources = _sources(pattern)
        if sources and all(s in FORWARDED_SOURCES for s in sources):
            home.append((f"{machine}.{name}", name, pattern))
        elif not (sources and all(s in HOME_ONLY_SOURCES for s in sources)):
            raise ValueError(f"{machine}.{name}: source {sources} is neither forwarded nor home-only: decide which")
    kept: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for index, (where, name, pattern) in enumerate(home):
        broader = [other for other_index, (_, _, other) in enumerate(home) if other_index != index and covers(other, pattern)
                   and (not covers(pattern, other) or other_index < index)]  # strictly broader, or the same and earlier
        if broader:
            continue  # that home pattern's forwarder carries these events already
        rule = f"Forward{name}" if f"Forward{name}" not in kept else f"Forward{where.replace('.', '')}"
        kept[rule] = (pattern, [])
    for where, _, pattern in home:
        for rule, (forwarded, served) in kept.items():
            if covers(forwarded, pattern):
                served.append(where)
    return kept


class _Intrinsic:
    def __init__(self, tag: str, value: Any):
        self.tag, self.value = tag, value


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Intrinsic, lambda dumper, node: dumper.represent_scalar(node.tag, node.value))


def _short_form(node: Any) -> Any:
    """{"Ref": x} -> !Ref x, {"Fn::Sub": s} -> !Sub s: the home template's own spelling."""
    if isinstance(node, dict) and len(node) == 1:
        (key, value), = node.items()
        if key == "Ref" or (key == "Fn::Sub" and isinstance(value, str)):
            return _Intrinsic("!Ref" if key == "Ref" else "!Sub", value)
    if isinstance(node, dict):
        return {k: _short_form(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_short_form(v) for v in node]
    return node


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        if "Ref" in node:
            return {node["Ref"]}
        if any(key.startswith("Fn::") and key not in ("Fn::Sub",) for key in node):
            raise ValueError(f"a trigger pattern uses {list(node)}: only Ref and Sub of parameters can be forwarded")
        return set().union(*(_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def _dump(node: Any, indent: int, flow: bool | None = None) -> list[str]:
    text = yaml.dump(_short_form(node), Dumper=_Dumper, sort_keys=False, default_flow_style=flow, width=1000)
    return [" " * indent + line for line in text.rstrip("\n").splitlines()]


def template(path: Path = REPO / "template.yaml") -> str:
    """The text of region-forwarder.yaml, derived from the template at ``path``."""
    home = load_template(path)
    rules = forwarded_rules(home)
    parameters = sorted(set().union(*(_refs(pattern) for pattern, _ in rules.values())))
    for name in parameters:
        if name not in home["Parameters"]:
            raise ValueError(f"a trigger pattern refers to {name}, which is not a parameter of {path.name}")
    out = [
        "# Generated from template.yaml's trigger rules by `make forwarder` (tools/region_forwarder.py): do not edit.",
        "# Deploy once in every FederationRegions region (not in the deployment region), README \"Deploy\":",
        "#   sam deploy -t region-forwarder.yaml --region <r> --stack-name slurm-multicluster-forwarder \\",
        "#     --capabilities CAPABILITY_IAM --parameter-overrides HomeRegion=<deployment region>",
        'AWSTemplateFormatVersion: "2010-09-09"',
        "Description: >-",
        "  slurm-multicluster: forwards this region's ParallelCluster stack events (the trigger patterns of",
        "  template.yaml) to the default event bus of the region where the workflows are deployed.",
        "",
        "Parameters:",
        "  HomeRegion:",
        "    Type: String",
        f"    AllowedPattern: {json.dumps(v.REGION.pattern)}",
        "    Description: The region where slurm-multicluster (template.yaml) is deployed, with this region in its FederationRegions.",
    ]
    for name in parameters:
        spec = dict(home["Parameters"][name])
        spec["Description"] = f"The slurm-multicluster stack's {name}, the same value. {spec.get('Description', '')}".strip()
        out += [f"  {name}:", *_dump(spec, 4, flow=False)]
    out += [
        "",
        "Rules:",
        "  NotTheHomeRegion:",
        "    Assertions:",
        '      - Assert: !Not [!Equals [!Ref HomeRegion, !Ref "AWS::Region"]]',
        "        AssertDescription: The deployment region's own rules see its events; forward only from the other regions.",
        "",
        "Resources:",
        "  # EventBridge delivers to another region's bus only as a role allowed to put events on exactly that bus.",
        "  ForwardingRole:",
        "    Type: AWS::IAM::Role",
        "    Properties:",
        "      Description: Lets this region's forwarding rules put events on the home region's default bus, nothing else.",
        "      AssumeRolePolicyDocument:",
        '        Version: "2012-10-17"',
        "        Statement:",
        "          - Effect: Allow",
        "            Principal: {Service: events.amazonaws.com}",
        "            Action: sts:AssumeRole",
        "            Condition:",
        '              StringEquals: {"aws:SourceAccount": !Ref "AWS::AccountId"}',
        "      Policies:",
        "        - PolicyName: put-events-on-the-home-bus",
        "          PolicyDocument:",
        '            Version: "2012-10-17"',
        "            Statement:",
        "              - Effect: Allow",
        "                Action: events:PutEvents",
        f"                Resource: !Sub \"{HOME_BUS}\"",
    ]
    for rule, (pattern, served) in rules.items():
        out += [
            "",
            f"  {rule}:",
            "    Type: AWS::Events::Rule",
            "    Properties:",
            f"      Description: Forwards to the home region what template.yaml's {', '.join(served)} match.",
            "      EventBusName: default",
            "      State: ENABLED",
            "      EventPattern:",
            *_dump(pattern, 8),
            "      Targets:",
            "        - Id: home-region-default-bus",
            f"          Arn: !Sub \"{HOME_BUS}\"",
            "          RoleArn: !GetAtt ForwardingRole.Arn",
        ]
    out += [
        "",
        "Outputs:",
        "  HomeBusArn:",
        "    Description: The bus this region's stack events are forwarded to.",
        f"    Value: !Sub \"{HOME_BUS}\"",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(template(), end="")
