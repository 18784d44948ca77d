"""The AWS side of tests and the demo: moto running the real template.yaml and the real ASL.

Seams patched here, and only here (notes/moto.md), never in functions/:
- Lambda invoke runs the real handler in-process (``LambdaSimpleBackend.invoke``);
- SSM Run Command runs Command documents as SSM does (``SimpleSystemManagerBackend.send_command``): the
  document is looked up and the parameters checked against it (unknown, missing, allowedPattern/allowedValues:
  InvalidParameters) before any node sees anything, defaults filled, ``{{ Name }}`` interpolated, and the
  rendered aws:runShellScript text run on a node through an executor (``Command.invocation_response``, and the
  target resolution bug that fans ``InstanceIds`` out to every instance);
- EventBridge -> state machine routing as the template's rule declares it (moto cannot start a state machine),
  regional as on AWS: an event of another region reaches the deployment region's rules only through a rule of
  region-forwarder.yaml deployed there (``deploy_region_forwarder``), its envelope unchanged.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import yaml

REPO = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"
SSM_OUTPUT_LIMIT = 24000  # GetCommandInvocation truncates stdout/stderr here
MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
PAIRING_STATE_MACHINE = "PairingStateMachine"
ROTATION_STATE_MACHINE = "RotationStateMachine"
UNPAIRING_STATE_MACHINE = "UnpairingStateMachine"
SWEEP_STATE_MACHINE = "SweepStateMachine"
# moto logs every failed state at ERROR with its whole parse tree; the execution history says the same, briefly.
logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
LAYER = REPO / "functions" / "shared"  # the SAM layer, /opt/python on Lambda: importable here too
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))


def _moto_resizes_prefix_lists() -> None:
    """moto 5.2.5's ModifyManagedPrefixList ignores MaxEntries and drops the list's name when none is given; AWS
    does neither, and the product resizes its prefix lists (a list counts as its MaxEntries against a group's
    rules quota). Patched here, the one place moto's gaps are filled."""
    from moto.ec2.responses.vpcs import VPCs

    if getattr(VPCs.modify_managed_prefix_list, "resizes", False):
        return
    modify = VPCs.modify_managed_prefix_list

    def modify_and_resize(self: Any) -> Any:
        prefix_list = self.ec2_backend.managed_prefix_lists.get(self._get_param("PrefixListId"))
        name = prefix_list.prefix_list_name if prefix_list else None
        result = modify(self)
        if prefix_list is not None:
            prefix_list.prefix_list_name = self._get_param("PrefixListName") or name
            if self._get_param("MaxEntries"):
                prefix_list.max_entries = int(self._get_param("MaxEntries"))
        return result

    modify_and_resize.resizes = True  # type: ignore[attr-defined]
    VPCs.modify_managed_prefix_list = modify_and_resize  # type: ignore[method-assign]


_moto_resizes_prefix_lists()


# ---------------------------------------------------------------- template.yaml
class _CfnLoader(yaml.SafeLoader):
    """YAML loader that understands CloudFormation's short-form intrinsic functions."""


def _intrinsic(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: _intrinsic(loader, suffix, node))


def load_template(path: Path = REPO / "template.yaml") -> dict[str, Any]:
    """template.yaml as plain data, intrinsic functions in their long form."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 (SafeLoader subclass)


def code_dir(logical_id: str) -> Path:
    """The CodeUri directory template.yaml gives a function: tests load a handler from where SAM would."""
    return REPO / load_template()["Resources"][logical_id]["Properties"]["CodeUri"]


@dataclass
class Deployment:
    """What `deploy` created in moto from template.yaml."""

    region: str
    state_machine_arn: str  # the pairing state machine (the one EventBridge rules start)
    function_code: dict[str, Path]  # function name -> CodeUri directory
    rule_patterns: list[tuple[str, dict[str, Any]]]  # (state machine logical id, EventBridge pattern)
    parameters: dict[str, str]
    functions: dict[str, str] = field(default_factory=dict)  # logical id -> function name
    state_machines: dict[str, str] = field(default_factory=dict)  # logical id -> ARN, every state machine


class _Resolver:
    def __init__(self, parameters: dict[str, str], refs: dict[str, str], attrs: dict[tuple[str, str], str], region: str):
        self.parameters, self.refs, self.attrs, self.region = parameters, refs, attrs, region

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            name = node["Ref"]
            pseudo = {"AWS::Region": self.region, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws"}
            if name in pseudo:
                return pseudo[name]
            return self.parameters[name] if name in self.parameters else self.refs[name]
        if "Fn::GetAtt" in node:
            return self.attrs[tuple(node["Fn::GetAtt"])]
        if "Fn::Join" in node:
            separator, items = node["Fn::Join"]
            items = self(items)
            return separator.join(items if isinstance(items, list) else items.split(","))
        if "Fn::Sub" in node:
            text = node["Fn::Sub"]
            for key, value in {**self.parameters, "AWS::Region": self.region, "AWS::AccountId": ACCOUNT_ID,
                               "AWS::Partition": "aws"}.items():
                text = text.replace("${" + key + "}", str(value))
            return text
        return {key: self(value) for key, value in node.items()}


def _placeholder_zip() -> bytes:
    # moto wants a code package; the real code is run in-process from the CodeUri directory.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "")
    return buffer.getvalue()


def deploy(region: str, parameters: dict[str, str] | None = None, stack: str = "slurm-multicluster") -> Deployment:
    """Create the template's functions, table, rule and state machine in moto, as `sam deploy` would."""
    template = load_template()
    params = {name: str(spec.get("Default", "")) for name, spec in template.get("Parameters", {}).items()}
    params.update(parameters or {})
    resources = template["Resources"]
    refs: dict[str, str] = {}
    attrs: dict[tuple[str, str], str] = {}
    resolve = _Resolver(params, refs, attrs, region)

    for logical, resource in resources.items():
        if resource["Type"] == "AWS::DynamoDB::Table":
            name = f"{stack}-{logical}"
            props = resource["Properties"]
            boto3.client("dynamodb", region_name=region).create_table(
                TableName=name, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=props["AttributeDefinitions"], KeySchema=props["KeySchema"],
            )
            refs[logical] = name
        if resource["Type"] == "AWS::KMS::Key":  # the munge key secrets' key: functions get its ARN
            key = boto3.client("kms", region_name=region).create_key(
                Description=str(resolve(resource["Properties"].get("Description", ""))),
                Policy=json.dumps(resolve(resource["Properties"]["KeyPolicy"])),
            )["KeyMetadata"]
            refs[logical], attrs[(logical, "Arn")] = key["KeyId"], key["Arn"]
        if resource["Type"] == "AWS::Serverless::StateMachine":  # known before it exists: functions may refer to it
            arn = f"arn:aws:states:{region}:{ACCOUNT_ID}:stateMachine:{stack}-{logical}"
            refs[logical], attrs[(logical, "Arn")], attrs[(logical, "Name")] = arn, arn, f"{stack}-{logical}"

    iam = boto3.client("iam", region_name=region)
    role_arn = iam.create_role(RoleName=f"{stack}-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    globals_ = template.get("Globals", {}).get("Function", {})
    lambda_client = boto3.client("lambda", region_name=region)
    function_code: dict[str, Path] = {}
    functions: dict[str, str] = {}
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = {**globals_, **resource["Properties"]}
        env = {**globals_.get("Environment", {}).get("Variables", {}),
               **resource["Properties"].get("Environment", {}).get("Variables", {})}
        name = f"{stack}-{logical}"
        created = lambda_client.create_function(
            FunctionName=name, Runtime=props["Runtime"], Role=role_arn, Handler=props["Handler"],
            Code={"ZipFile": _placeholder_zip()}, Timeout=int(props.get("Timeout", 3)),
            Environment={"Variables": {k: str(resolve(v)) for k, v in env.items()}},
        )
        refs[logical] = name
        attrs[(logical, "Arn")] = created["FunctionArn"]
        function_code[name] = REPO / props["CodeUri"]
        functions[logical] = name

    state_machines: dict[str, str] = {}
    patterns: list[tuple[str, dict[str, Any]]] = []
    events = boto3.client("events", region_name=region)
    for logical, machine in resources.items():
        if machine["Type"] != "AWS::Serverless::StateMachine":
            continue
        definition = (REPO / machine["Properties"]["DefinitionUri"]).read_text()
        for key, value in machine["Properties"]["DefinitionSubstitutions"].items():
            definition = definition.replace("${" + key + "}", str(resolve(value)))
        state_machines[logical] = boto3.client("stepfunctions", region_name=region).create_state_machine(
            name=f"{stack}-{logical}", definition=definition, roleArn=role_arn
        )["stateMachineArn"]
        # Event rules (schedules never fire in moto): route_event starts every state machine a rule matches.
        rules = [resolve(event["Properties"]["Pattern"]) for event in machine["Properties"].get("Events", {}).values()
                 if event["Type"] == "EventBridgeRule"]
        for index, pattern in enumerate(rules):
            events.put_rule(Name=f"{stack}-{logical}-{index}", EventPattern=json.dumps(pattern))
        patterns += [(logical, pattern) for pattern in rules]
    # The node documents: template.yaml's nested stack here, and the same template deployed by hand in every
    # other FederationRegions region (README, Deploy).
    federation_regions = [r.strip() for r in params.get("FederationRegions", "").split(",") if r.strip()]
    for logical, resource in resources.items():
        if resource["Type"] == "AWS::Serverless::Application":
            nested = {key: str(resolve(value)) for key, value in resource["Properties"].get("Parameters", {}).items()}
            for documents_region in dict.fromkeys([region, *federation_regions]):
                deploy_node_documents(documents_region, nested, REPO / resource["Properties"]["Location"])
    # ... and region-forwarder.yaml, deployed by hand in each of those regions too (README, Deploy).
    for forwarder_region in dict.fromkeys(r for r in federation_regions if r != region):
        deploy_region_forwarder(forwarder_region, region, params, stack=f"{stack}-forwarder")
    return Deployment(region, state_machines[PAIRING_STATE_MACHINE], function_code, patterns, params, functions,
                      state_machines)


def deploy_node_documents(region: str, parameters: dict[str, str], path: Path = REPO / "node-documents.yaml") -> list[str]:
    """Create node-documents.yaml's SSM documents in ``region``, as its stack would; returns their names."""
    template = load_template(path)
    params = {name: str(spec.get("Default", "")) for name, spec in template.get("Parameters", {}).items()}
    params.update(parameters)
    resolve = _Resolver(params, {}, {}, region)
    ssm = boto3.client("ssm", region_name=region)
    names = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::SSM::Document":
            raise ValueError(f"{path.name}: only AWS::SSM::Document resources are modelled, not {resource['Type']}")
        props = resolve(resource["Properties"])
        ssm.create_document(Name=props["Name"], Content=json.dumps(props["Content"]),
                            DocumentType=props["DocumentType"], DocumentFormat=props["DocumentFormat"])
        names.append(props["Name"])
    return names


def home_bus_arn(home_region: str) -> str:
    """The deployment region's default event bus, where template.yaml's trigger rules live."""
    return f"arn:aws:events:{home_region}:{ACCOUNT_ID}:event-bus/default"


def deploy_region_forwarder(region: str, home_region: str, parameters: dict[str, str] | None = None,
                            path: Path = REPO / "region-forwarder.yaml",
                            stack: str = "slurm-multicluster-forwarder") -> list[str]:
    """Create region-forwarder.yaml's role and rules in ``region``, as its stack would; returns the rule names.

    ``parameters`` may hold every parameter of the home stack: the forwarder takes the ones it declares."""
    template = load_template(path)
    declared = template.get("Parameters", {})
    params = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    params.update({k: v for k, v in (parameters or {}).items() if k in declared})
    params["HomeRegion"] = home_region
    if home_region == region:  # the template's Rules: NotTheHomeRegion
        raise ValueError(f"{path.name} refuses its home region {region}: the home rules see its events already")
    attrs: dict[tuple[str, str], str] = {}
    resolve = _Resolver(params, {}, attrs, region)
    iam, events = boto3.client("iam", region_name=region), boto3.client("events", region_name=region)
    names = []
    for logical, resource in template["Resources"].items():
        if resource["Type"] not in ("AWS::IAM::Role", "AWS::Events::Rule"):
            raise ValueError(f"{path.name}: only AWS::IAM::Role and AWS::Events::Rule are modelled, not {resource['Type']}")
    for logical, resource in template["Resources"].items():  # roles first: rules name them
        if resource["Type"] == "AWS::IAM::Role":
            props = resolve(resource["Properties"])
            role = iam.create_role(RoleName=f"{stack}-{region}-{logical}",
                                   AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]))["Role"]
            for policy in props.get("Policies", []):
                iam.put_role_policy(RoleName=role["RoleName"], PolicyName=policy["PolicyName"],
                                    PolicyDocument=json.dumps(policy["PolicyDocument"]))
            attrs[(logical, "Arn")] = role["Arn"]
    for logical, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Events::Rule":
            props = resolve(resource["Properties"])
            name = f"{stack}-{logical}"
            events.put_rule(Name=name, EventPattern=json.dumps(props["EventPattern"]), State=props.get("State", "ENABLED"),
                            EventBusName=props.get("EventBusName", "default"), Description=props.get("Description", ""))
            events.put_targets(Rule=name, EventBusName=props.get("EventBusName", "default"), Targets=props["Targets"])
            names.append(name)
    return names


def _may_put_events(role_arn: str, bus_arn: str) -> bool:
    """Does the target's role let EventBridge put events on ``bus_arn``? Trusted by events.amazonaws.com, with an
    inline Allow of events:PutEvents naming exactly that bus (what region-forwarder.yaml's role holds)."""
    iam = boto3.client("iam", region_name="us-east-1")
    name = role_arn.rsplit("/", 1)[-1]
    try:
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    except iam.exceptions.NoSuchEntityException:
        return False
    trust = json.loads(trust) if isinstance(trust, str) else trust
    if not any(s.get("Effect") == "Allow" and s.get("Principal", {}).get("Service") == "events.amazonaws.com"
               for s in trust["Statement"]):
        return False
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        for statement in document["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if statement["Effect"] == "Allow" and "events:PutEvents" in actions and bus_arn in resources:
                return True
    return False


def _forwarding_rules(event: dict[str, Any], home_region: str) -> list[str]:
    """The rules of the event's own region that forward it to ``home_region``'s default bus (each one delivers a
    copy, as EventBridge does): enabled, pattern matching, target that bus through a role allowed to put there."""
    from moto.events.models import EventPattern

    events = boto3.client("events", region_name=event["region"])
    forwarding = []
    for page in events.get_paginator("list_rules").paginate(EventBusName="default"):
        for rule in page["Rules"]:
            if rule.get("State") != "ENABLED" or "EventPattern" not in rule:
                continue
            if not EventPattern.load(rule["EventPattern"]).matches_event(event):
                continue
            targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
            if any(t["Arn"] == home_bus_arn(home_region) and _may_put_events(t.get("RoleArn", ""), t["Arn"])
                   for t in targets):
                forwarding.append(rule["Name"])
    return forwarding


# ---------------------------------------------------------------- Lambda: real handlers in-process
@dataclass
class LambdaContext:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    deadline: float = field(default_factory=lambda: time.monotonic() + 900)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


_handlers: dict[str, Callable[..., Any]] = {}
_handlers_lock = threading.Lock()


def _handler(function_name: str, code_dir: Path, handler: str) -> Callable[..., Any]:
    with _handlers_lock:
        if function_name not in _handlers:
            module_name, attribute = handler.rsplit(".", 1)
            unique = f"lambda_{code_dir.name}_{module_name}"
            spec = importlib.util.spec_from_file_location(unique, code_dir / f"{module_name}.py")
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            spec.loader.exec_module(module)
            _handlers[function_name] = getattr(module, attribute)
        return _handlers[function_name]


@contextmanager
def real_lambda_handlers(deployment: Deployment) -> Iterator[None]:
    """Make moto's Lambda run the deployment's real handlers in this process."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    with _handlers_lock:
        _handlers.clear()  # fresh modules per deployment: their module-level clients captured the old endpoint
    original = LambdaSimpleBackend.invoke
    moto_invoke = getattr(original, "moto_original", original)

    def invoke(self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any) -> bytes:
        function = self.get_function(function_name, qualifier)
        code_dir = deployment.function_code.get(function.function_name)
        if code_dir is None:
            return moto_invoke(self, function_name, qualifier, body, headers, response_headers)
        os.environ.update(function.environment_vars)  # all functions share the Globals environment
        event = json.loads(body) if body else {}
        # the function's own Timeout, as on AWS: node_commands gives up before it runs out
        context = LambdaContext(function.function_name, function.function_arn,
                                deadline=time.monotonic() + int(function.timeout))
        try:
            handler = _handler(function.function_name, code_dir, function.handler)
            return json.dumps(handler(event, context)).encode()
        except Exception as error:  # what the Lambda runtime reports for an unhandled exception
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({
                "errorMessage": str(error),
                "errorType": type(error).__name__,
                "stackTrace": traceback.format_tb(error.__traceback__),
            }).encode()

    invoke.moto_original = moto_invoke  # type: ignore[attr-defined]
    LambdaSimpleBackend.invoke = invoke
    try:
        yield
    finally:
        LambdaSimpleBackend.invoke = original


# ---------------------------------------------------------------- SSM Run Command on real nodes
@dataclass(frozen=True)
class RunCommand:
    """One invocation of a Command document on one instance, rendered as SSM hands it to the agent."""

    instance_id: str
    region: str
    document_name: str
    parameters: dict[str, str]  # every parameter of the document, defaults filled in
    text: str  # the aws:runShellScript step's runCommand lines, parameters interpolated: the agent runs it with sh
    timeout: int  # the step's timeoutSeconds
    # set by CancelCommand while it runs: the executor kills the command's processes, as the SSM agent does
    cancelled: threading.Event = field(default_factory=threading.Event)


Executor = Callable[[RunCommand], tuple[int, str, str]]  # -> (exit code, stdout, stderr)
_PARAMETER_REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def _render(template: str, values: dict[str, str]) -> str:
    return _PARAMETER_REFERENCE.sub(lambda m: values.get(m[1], m[0]), template)


def render_document(document_name: str, document_type: str, content: dict[str, Any],
                    sent: dict[str, list[str]]) -> tuple[dict[str, str], str, int]:
    """What SSM does with a Command document at SendCommand: check the parameters sent against the document's
    (unknown, missing, allowedPattern/allowedValues: InvalidParameters), fill defaults, interpolate
    ``{{ Name }}`` into the aws:runShellScript step. Returns (parameters, command text, timeout seconds)."""
    from moto.ssm.exceptions import InvalidDocument, SSMException

    steps = content.get("mainSteps") or []
    if (document_type != "Command" or str(content.get("schemaVersion")) != "2.2" or len(steps) != 1
            or steps[0].get("action") != "aws:runShellScript"):
        raise InvalidDocument(f"{document_name}: the lab runs Command documents (schemaVersion 2.2) of one "
                              "aws:runShellScript step only")
    definitions: dict[str, Any] = content.get("parameters") or {}
    values: dict[str, str] = {}
    for name, given in sent.items():
        if name not in definitions:
            raise SSMException("InvalidParameters", f"Parameter {name!r} is not defined in {document_name}")
        if len(given) != 1:
            raise SSMException("InvalidParameters", f"Parameter {name!r} takes one String value")
        values[name] = given[0]
    for name, definition in definitions.items():
        if definition.get("type") != "String":
            raise InvalidDocument(f"{document_name}: the lab models String parameters only ({name})")
        if name not in values:
            if "default" not in definition:
                raise SSMException("InvalidParameters", f"Missing required parameter {name!r}")
            values[name] = str(definition["default"])
            continue
        allowed = definition.get("allowedValues")
        pattern = definition.get("allowedPattern")
        if (allowed is not None and values[name] not in allowed) or (
                pattern is not None and re.fullmatch(pattern, values[name]) is None):
            raise SSMException("InvalidParameters", f"Parameter {name!r} value {values[name]!r} does not match "
                               f"{'the allowed values' if allowed is not None else 'the allowed pattern ' + pattern}")
    inputs = steps[0].get("inputs", {})
    text = "\n".join(_render(line, values) for line in inputs.get("runCommand", []))
    return values, text, int(_render(str(inputs.get("timeoutSeconds", "3600")), values))


def _prepare_command(backend: Any, document_name: str | None, sent: dict[str, list[str]]) -> tuple[dict[str, str], str, int]:
    """SendCommand's checks in moto's SSM backend: the document must exist there, then ``render_document``."""
    from moto.ssm.exceptions import InvalidDocument

    if not document_name:
        raise InvalidDocument("The specified document does not exist.")
    # moto's documents have one version each: $DEFAULT and $LATEST (what node_commands sends) are the same
    document = backend._get_documents(document_name).get_default_version()
    return render_document(document_name, document.document_type, document.content_json, sent)


def _instance_state(account_id: str, region: str, instance_id: str) -> str | None:
    """moto's EC2 state of an instance ("running", "terminated", ...), None when it does not know it."""
    from moto.ec2.models import ec2_backends

    for reservation in ec2_backends[account_id][region].all_reservations():
        for instance in reservation.instances:
            if instance.id == instance_id:
                return instance.state
    return None


def _instance_information(account_id: str, region: str, instance_ids: list[str],
                          registered: Callable[[str], bool]) -> list[dict[str, Any]]:
    """DescribeInstanceInformation's list (moto has none): one entry per EC2 instance whose SSM agent is
    registered, PingStatus Online while it runs and ConnectionLost once it does not; an instance without the
    agent (or its role's SSM policy) is not listed at all, as on AWS."""
    from moto.ec2.models import ec2_backends

    listed = []
    for reservation in ec2_backends[account_id][region].all_reservations():
        for instance in reservation.instances:
            if instance_ids and instance.id not in instance_ids or not registered(instance.id):
                continue
            if instance.state == "terminated":
                continue
            listed.append({"InstanceId": instance.id, "ResourceType": "EC2Instance", "PlatformType": "Linux",
                           "PingStatus": "Online" if instance.state == "running" else "ConnectionLost",
                           "IPAddress": instance.private_ip, "AgentVersion": "3.3.0.0"})
    return listed


@contextmanager
def ssm_runs_on(executor: Executor, routable: Callable[[str], bool],
                registered: Callable[[str], bool] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Make moto's SSM run Command documents as SSM does, each rendered invocation through ``executor``;
    yields the list of invocations sent (command id, instance, document name, parameters, comment, and
    ``Cancelled: True`` once a CancelCommand reached it while it ran). A CancelCommand sets the running
    invocation's ``RunCommand.cancelled``: an executor that can, kills the command's processes then.

    Instances that ``routable`` rejects behave like instances without the SSM agent: SendCommand fails with
    InvalidInstanceId, as it does on AWS. DescribeInstanceInformation lists the instances ``registered`` accepts
    (default: every instance, as with ParallelCluster's AMIs, whose agent registers with the instance role).
    """
    from moto.ssm import models as ssm_models
    from moto.ssm.exceptions import SSMException

    from moto.ssm import responses as ssm_responses

    sent: list[dict[str, Any]] = []
    running: dict[tuple[str, str], RunCommand] = {}  # (command id, instance id) -> the invocation still running
    original_send = ssm_models.SimpleSystemManagerBackend.send_command
    original_response = ssm_models.Command.invocation_response
    original_targets = ssm_models.Command._get_instance_ids_from_targets
    # moto's own methods, even when another seam is already active (nested labs): the base dict must not
    # come from an outer executor that does not know this lab's instances.
    moto_send = getattr(original_send, "moto_original", original_send)
    moto_response = getattr(original_response, "moto_original", original_response)
    moto_targets = getattr(original_targets, "moto_original", original_targets)

    def send_command(self: Any, **kwargs: Any) -> Any:
        _prepare_command(self, kwargs.get("document_name"), kwargs.get("parameters") or {})  # refuses before any node
        return moto_send(self, **kwargs)

    def targets(self: Any) -> list[str]:
        return moto_targets(self) if self.targets else []  # moto fans InstanceIds out to every instance

    def cancel_command(self: Any, command_id: str, instance_ids: list[str]) -> None:
        # SSM's CancelCommand (moto has none): an invocation not yet final ends Cancelled, its executor is told to
        # kill it (the agent terminates the command's process), and its later result is dropped
        command = self.get_command_by_id(command_id)
        for invocation in command.invocations:
            if (not instance_ids or invocation["InstanceId"] in instance_ids) and invocation["Status"] in (
                    "Pending", "InProgress", "Delayed"):
                invocation.update(Status="Cancelled", StatusDetails="Cancelled", ResponseCode=-1)
                run_command = running.get((command_id, invocation["InstanceId"]))
                if run_command is not None:
                    run_command.cancelled.set()
                for record in sent:
                    if record["CommandId"] == command_id and record["InstanceId"] == invocation["InstanceId"]:
                        record["Cancelled"] = True

    def cancel_command_response(self: Any) -> Any:
        from moto.core.responses import ActionResult

        self.ssm_backend.cancel_command(self._get_param("CommandId"), self._get_param("InstanceIds", []))
        return ActionResult({})

    def describe_instance_information_response(self: Any) -> Any:
        from moto.core.responses import ActionResult

        filters = self._get_param("Filters") or []
        wanted = [i for f in filters if f.get("Key") == "InstanceIds" for i in f.get("Values", [])]
        statuses = [s for f in filters if f.get("Key") == "PingStatus" for s in f.get("Values", [])]
        listed = _instance_information(self.current_account, self.region, wanted,
                                       registered or (lambda instance_id: True))
        return ActionResult({"InstanceInformationList": [
            i for i in listed if not statuses or i["PingStatus"] in statuses]})

    def invocation_response(self: Any, instance_id: str, plugin_name: str) -> dict[str, Any]:
        # SendCommand refuses instances that are shutting down or terminated (AWS API reference, SendCommand:
        # InvalidInstanceId, "Invalid states are: Shutting-down and Terminated"); moto sends to them.
        if not routable(instance_id) or _instance_state(self.account_id, self.backend_region, instance_id) in (
                "shutting-down", "terminated"):
            raise SSMException("InvalidInstanceId", f"Instances [[{instance_id}]] not in a valid state for account")
        invocation = moto_response(self, instance_id, plugin_name)
        invocation.update(Status="InProgress", StatusDetails="InProgress", ResponseCode=-1)
        backend = ssm_models.ssm_backends[self.account_id][self.backend_region]
        values, text, timeout = _prepare_command(backend, self.document_name, self.parameters)
        command = RunCommand(instance_id, self.backend_region, self.document_name, values, text, timeout)
        running[(self.command_id, instance_id)] = command
        sent.append({"CommandId": self.command_id, "InstanceId": instance_id, "DocumentName": self.document_name,
                     "Parameters": self.parameters, "Comment": self.comment})

        command_id = self.command_id

        def run() -> None:
            try:
                code, stdout, stderr = executor(command)
            except Exception as error:  # the agent reports a failed invocation, not a crash
                code, stdout, stderr = 1, "", f"executor error: {error}"
            finally:
                running.pop((command_id, instance_id), None)
            if invocation["Status"] == "Cancelled":
                return
            status = "Success" if code == 0 else "Failed"
            invocation.update(Status=status, StatusDetails=status, ResponseCode=code,
                              StandardOutputContent=stdout[:SSM_OUTPUT_LIMIT],
                              StandardErrorContent=stderr[:SSM_OUTPUT_LIMIT])

        threading.Thread(target=run, name=f"ssm-{instance_id}", daemon=True).start()
        return invocation

    send_command.moto_original = moto_send  # type: ignore[attr-defined]
    invocation_response.moto_original = moto_response  # type: ignore[attr-defined]
    targets.moto_original = moto_targets  # type: ignore[attr-defined]
    ssm_models.SimpleSystemManagerBackend.send_command = send_command
    ssm_models.Command.invocation_response = invocation_response
    ssm_models.Command._get_instance_ids_from_targets = targets
    # moto answers an action it lacks with an error; outer seams' cancellations stay theirs (nested labs)
    original_cancel = getattr(ssm_models.SimpleSystemManagerBackend, "cancel_command", None)
    original_cancel_response = getattr(ssm_responses.SimpleSystemManagerResponse, "cancel_command", None)
    original_information = getattr(ssm_responses.SimpleSystemManagerResponse, "describe_instance_information", None)
    ssm_models.SimpleSystemManagerBackend.cancel_command = cancel_command
    ssm_responses.SimpleSystemManagerResponse.cancel_command = cancel_command_response
    ssm_responses.SimpleSystemManagerResponse.describe_instance_information = describe_instance_information_response
    try:
        yield sent
    finally:
        ssm_models.SimpleSystemManagerBackend.send_command = original_send
        ssm_models.Command.invocation_response = original_response
        ssm_models.Command._get_instance_ids_from_targets = original_targets
        for owner, name, original in ((ssm_models.SimpleSystemManagerBackend, "cancel_command", original_cancel),
                                      (ssm_responses.SimpleSystemManagerResponse, "cancel_command",
                                       original_cancel_response),
                                      (ssm_responses.SimpleSystemManagerResponse, "describe_instance_information",
                                       original_information)):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


# ---------------------------------------------------------------- EventBridge -> state machine
def route_event(deployment: Deployment, event: dict[str, Any]) -> str | None:
    """Deliver ``event`` as EventBridge would: start the state machine if a template rule matches.

    Returns the execution ARN, or None when no rule matches. The event is also put on the bus, so it is
    recorded like any other. When rules of several state machines match (a tag change starts both the pairing
    and the unpairing, and each acts only on its own action), all start: see ``route_event_to_all``.
    """
    started = route_event_to_all(deployment, event)
    return next(iter(started.values()), None)


def route_event_to_all(deployment: Deployment, event: dict[str, Any]) -> dict[str, str]:
    """Deliver ``event`` to every state machine with a matching rule; logical id -> execution ARN.

    The event is emitted in its own ``region``, as CloudFormation emits it where the stack lives: one of another
    region reaches the deployment's rules only through a forwarding rule there (region-forwarder.yaml), with its
    envelope (``source``, ``region``, ``account``) unchanged; without one it starts nothing, as on AWS."""
    from moto.events.models import EventPattern

    region = event.get("region", deployment.region)
    boto3.client("events", region_name=region).put_events(Entries=[{
        "Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(event["detail"]),
        "Resources": event.get("resources", []),
    }])
    copies = 1 if region == deployment.region else len(_forwarding_rules(event, deployment.region))
    started: dict[str, str] = {}
    for _ in range(copies):
        matching = dict.fromkeys(logical for logical, pattern in deployment.rule_patterns
                                 if EventPattern.load(json.dumps(pattern)).matches_event(event))
        started.update({logical: start_execution(deployment, event, logical) for logical in matching})
    return started


def start_execution(deployment: Deployment, execution_input: dict[str, Any],
                    state_machine: str = PAIRING_STATE_MACHINE) -> str:
    """Start a state machine of the template (by logical id) with a generated name, as EventBridge and
    `sam remote invoke` do (moto leaves an unnamed execution nameless, AWS names it with a UUID)."""
    return boto3.client("stepfunctions", region_name=deployment.region).start_execution(
        stateMachineArn=deployment.state_machines[state_machine], name=str(uuid.uuid4()),
        input=json.dumps(execution_input),
    )["executionArn"]


def stack_status_event(stack_id: str, status: str, region: str, event_id: str | None = None) -> dict[str, Any]:
    """A CloudFormation "Stack Status Change" event exactly as EventBridge delivers it."""
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": "CloudFormation Stack Status Change",
        "source": "aws.cloudformation",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [stack_id],
        "detail": {
            "stack-id": stack_id,
            "status-details": {"status": status, "status-reason": ""},
            "client-request-token": "",
        },
    }


def tag_change_event(stack_id: str, region: str, changed: list[str], tags: dict[str, str]) -> dict[str, Any]:
    """An aws.tag "Tag Change on Resource" event for a stack: ``tags`` are its tags after the change."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Tag Change on Resource",
        "source": "aws.tag",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [stack_id],
        "detail": {"changed-tag-keys": changed, "service": "cloudformation", "resource-type": "stack", "version": 2,
                   "tags": tags},
    }


def events_queue(region: str, name: str = "slurm-multicluster-events") -> str:
    """An SQS queue that receives every event the product publishes (source slurm-multicluster): its URL."""
    sqs = boto3.client("sqs", region_name=region)
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", region_name=region)
    events.put_rule(Name=name, EventPattern=json.dumps({"source": ["slurm-multicluster"]}))
    events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
    return queue


def published(queue: str, region: str) -> list[dict[str, Any]]:
    """The events that reached ``queue`` since the last call, oldest first (read and deleted: a message left
    in the queue would come back after its visibility timeout and be counted twice)."""
    sqs = boto3.client("sqs", region_name=region)
    events: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        events += [json.loads(m["Body"]) for m in messages]
        sqs.delete_message_batch(QueueUrl=queue, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
    return events


# ---------------------------------------------------------------- executions
def wait_for_execution(
    execution_arn: str, region: str, *, timeout: float = 600, on_event: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Poll until the execution ends (deadline ``timeout``); ``on_event`` sees each new history event."""
    sfn = boto3.client("stepfunctions", region_name=region)
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        description = sfn.describe_execution(executionArn=execution_arn)
        if on_event:
            events = history(execution_arn, region)
            for event in events[seen:]:
                on_event(event)
            seen = len(events)
        if description["status"] != "RUNNING":
            return description
        if time.monotonic() > deadline:
            raise TimeoutError(f"execution {execution_arn} still running after {timeout} s")
        time.sleep(0.1)


def history(execution_arn: str, region: str) -> list[dict[str, Any]]:
    """Every history event of an execution, oldest first."""
    sfn = boto3.client("stepfunctions", region_name=region)
    return [e for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
            for e in page["events"]]


def state_names(execution_arn: str, region: str) -> list[str]:
    """Names of the states the execution entered, in order."""
    return [e["stateEnteredEventDetails"]["name"] for e in history(execution_arn, region)
            if "stateEnteredEventDetails" in e]
