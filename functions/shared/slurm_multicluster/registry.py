"""The federation registry: which clusters an administrator admitted to which federation (default deny).

A stack's federation tag is only the cluster's *request* to join; the registry is the *permission*. It lives in
SSM Parameter Store under ``/slurm-multicluster/<DeploymentId>/federations/<federation>/`` in the deployment
region, writable only through the template's FederationAdministrator managed policy, readable by the workflows,
versioned by Parameter Store and audited by CloudTrail (every PutParameter/DeleteParameter is a management event).
Its changes reach the workflows as EventBridge "Parameter Store Change" events (a revocation unpairs at once).

Layout (one parameter per fact, so an admission or revocation is one audited call and one event):

``<root>/<federation>/settings``
    JSON: ``{"accountingStackArn": ARN, "rotationDays": 90, "stopMemberSlurmdbd": true,
    "unpairRemovesAccounting": false, "srunPortRange": "60001-63000"}`` (only accountingStackArn is required). Declares the federation: the
    accounting cluster is the stack with exactly this StackId, whatever any tag says.
``<root>/<federation>/members/<region>/<stack name>/<stack uuid>``
    value: the stack ARN. Admits exactly that stack: a stack of the same name in another region or account, or
    a re-created stack that reuses the name, has another ARN and is not admitted.
``<root>/<federation>/admission-rules/<rule name>``
    JSON: ``{"account": "123456789012", "region": "us-east-1", "stackNamePattern": "hpc-*"}``: clusters created
    later whose stack matches are admitted without a further step (``*`` and ``?`` wildcards, case-sensitive).

An entry that does not parse is ignored and logged (it admits nothing); a settings entry that does not parse
leaves the federation undeclared, so nothing joins it until the administrator fixes it.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, PrerequisiteFailed
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

ACCOUNT = re.compile(r"^\d{12}$")
STACK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9*?-]{1,128}$")
RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# The unpairing's "revoked" trigger: the member parameter that was deleted names the stack in its path.
MEMBER_PATH = re.compile(
    r"^/slurm-multicluster/(?P<deployment>[a-z][a-z0-9-]{0,23})/federations/(?P<federation>[A-Za-z0-9][A-Za-z0-9_-]{0,62})"
    r"/members/(?P<region>[a-z0-9-]+)/(?P<name>[A-Za-z][A-Za-z0-9-]{0,127})/(?P<uuid>[0-9a-f-]{36})$"
)


def root(config: Settings) -> str:
    """The registry's parameter path of this deployment."""
    return f"/slurm-multicluster/{config.deployment_id}/federations"


def member_parameter(config: Settings, federation: str, stack_arn: str) -> str:
    """The parameter that admits ``stack_arn`` to ``federation`` (what `aws ssm put-parameter` writes)."""
    match = v.STACK_ARN.fullmatch(stack_arn)
    if not match:
        raise InvalidInput(f"invalid stack ARN: {stack_arn!r}")
    return f"{root(config)}/{federation}/members/{match['region']}/{match['name']}/{stack_arn.rsplit('/', 1)[-1]}"


def stack_arn_of_member_parameter(name: str, account: str, partition: str = "aws") -> tuple[str, str] | None:
    """(federation, stack ARN) that a member parameter's path names, or None when it is not one."""
    match = MEMBER_PATH.fullmatch(name)
    if not match:
        return None
    return match["federation"], (f"arn:{partition}:cloudformation:{match['region']}:{account}:"
                                 f"stack/{match['name']}/{match['uuid']}")


class _Entry(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Declaration(_Entry):
    """``<federation>/settings``: the federation exists, and these are its own settings."""

    accounting_stack_arn: str
    rotation_days: int | None = Field(default=None, ge=1, le=3650)  # None: no scheduled rotation
    stop_member_slurmdbd: bool | None = None  # None: the deployment's StopMemberSlurmdbd
    unpair_removes_accounting: bool | None = None  # None: the deployment's UnpairRemovesAccounting
    srun_port_range: str | None = None  # None: the deployment's SrunPortRange ("" turns it off for this federation)

    @field_validator("accounting_stack_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        return v.require(v.STACK_ARN, value, "accountingStackArn")

    @field_validator("srun_port_range")
    @classmethod
    def _srun_port_range(cls, value: str | None) -> str | None:
        return None if value is None else v.srun_port_range(value, "srunPortRange")


class AdmissionRule(_Entry):
    """``<federation>/admission-rules/<name>``: admit stacks of this account and region whose name matches."""

    account: str
    region: str
    stack_name_pattern: str

    @field_validator("account")
    @classmethod
    def _account(cls, value: str) -> str:
        return v.require(ACCOUNT, value, "account")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return v.require(v.REGION, value, "region")

    @field_validator("stack_name_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return v.require(STACK_NAME_PATTERN, value, "stackNamePattern")

    def matches(self, stack_arn: str) -> bool:
        match = v.STACK_ARN.fullmatch(stack_arn)
        return bool(match and match["account"] == self.account and match["region"] == self.region
                    and fnmatch.fnmatchcase(match["name"], self.stack_name_pattern))


class Federation(BaseModel):
    """One federation as the registry declares it."""

    name: str
    declaration: Declaration
    members: list[str] = []  # admitted stack ARNs
    rules: dict[str, AdmissionRule] = {}

    def admission(self, stack_arn: str) -> str | None:
        """Why ``stack_arn`` is admitted (for logs and events), or None when it is not."""
        if stack_arn == self.declaration.accounting_stack_arn:
            return "declared as the federation's accounting cluster"
        if stack_arn in self.members:
            return "admitted by its stack ARN"
        rule = next((name for name, rule in sorted(self.rules.items()) if rule.matches(stack_arn)), None)
        return f"admitted by admission rule {rule}" if rule else None

    def is_accounting(self, stack_arn: str) -> bool:
        return stack_arn == self.declaration.accounting_stack_arn

    def settings(self, config: Settings) -> Settings:
        """The deployment's settings with this federation's own overrides."""
        overrides = {key: value for key, value in {
            "stop_member_slurmdbd": self.declaration.stop_member_slurmdbd,
            "unpair_removes_accounting": self.declaration.unpair_removes_accounting,
            "srun_port_range": self.declaration.srun_port_range,
        }.items() if value is not None}
        return config.model_copy(update=overrides)


def _parameters(ssm: Any, path: str) -> dict[str, str]:
    paginator = ssm.get_paginator("get_parameters_by_path")
    return {p["Name"]: p["Value"] for page in paginator.paginate(Path=path, Recursive=True)
            for p in page["Parameters"]}


def _parse(federation: str, entries: dict[str, str], prefix: str) -> Federation | None:
    raw = entries.get(f"{prefix}/settings")
    if raw is None:
        return None
    try:
        declaration = Declaration.model_validate(json.loads(raw))
    except (ValueError, ValidationError, InvalidInput) as error:
        logger.error("registry: invalid federation settings, federation not declared",
                     extra={"parameter": f"{prefix}/settings", "error": _short(error)})
        return None
    members, rules = [], {}
    for name, value in sorted(entries.items()):
        if name.startswith(f"{prefix}/members/"):
            expected = MEMBER_PATH.fullmatch(name)
            arn = v.STACK_ARN.fullmatch(value)
            if not (expected and arn and (arn["region"], arn["name"], value.rsplit("/", 1)[-1]) ==
                    (expected["region"], expected["name"], expected["uuid"])):
                logger.error("registry: ignoring a member entry whose value is not the stack ARN its path names",
                             extra={"parameter": name})
                continue
            members.append(value)
        elif name.startswith(f"{prefix}/admission-rules/"):
            rule_name = name.rsplit("/", 1)[-1]
            try:
                v.require(RULE_NAME, rule_name, "admission rule name")
                rules[rule_name] = AdmissionRule.model_validate(json.loads(value))
            except (ValueError, ValidationError, InvalidInput) as error:
                logger.error("registry: ignoring an invalid admission rule", extra={"parameter": name,
                                                                                    "error": _short(error)})
    return Federation(name=federation, declaration=declaration, members=members, rules=rules)


def _short(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error)[:300]


def federation(ssm: Any, config: Settings, name: str) -> Federation | None:
    """The registry's declaration of federation ``name``, or None when it is not declared (or invalid)."""
    v.require(v.FEDERATION_NAME, name, "federation name")
    prefix = f"{root(config)}/{name}"
    return _parse(name, _parameters(ssm, prefix), prefix)


def federations(ssm: Any, config: Settings) -> list[Federation]:
    """Every declared federation of this deployment, by name."""
    entries = _parameters(ssm, root(config))
    names = sorted({name[len(root(config)) + 1:].split("/", 1)[0] for name in entries})
    found = []
    for name in names:
        if not v.FEDERATION_NAME.fullmatch(name):
            logger.error("registry: ignoring a federation with an invalid name", extra={"federation": name[:80]})
            continue
        parsed = _parse(name, entries, f"{root(config)}/{name}")
        if parsed is not None:
            found.append(parsed)
    return found


def declared(clients: Any, config: Settings, name: str) -> Federation:
    """Federation ``name`` as the registry declares it (``clients`` is (service, region) -> boto3 client);
    PrerequisiteFailed, saying how to declare it, when it is not declared."""
    found = federation(clients("ssm", config.deployment_region), config, name)
    if found is None:
        raise PrerequisiteFailed(
            f"federation {name} is not declared in the registry: an administrator declares it with the parameter "
            f"{root(config)}/{name}/settings (README: 'Declare a federation')"
        )
    return found


def read(ssm: Any, name: str) -> str | None:
    """One registry parameter's value, or None when it does not exist (any more)."""
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None
