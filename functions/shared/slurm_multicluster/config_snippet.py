"""ParallelCluster config for clusters created (or re-created) into a federation: paired from birth, on every update.

`pcluster update-cluster` regenerates `slurm_parallelcluster.conf`, which is why the pairing workflow re-applies
its accounting edit on UPDATE_COMPLETE. A cluster whose own config says `ExternalSlurmdbd` (the federation's
slurmdbd) and `MungeKeySecretArn` (the federation's key) has nothing to drift: ParallelCluster itself writes
those settings on every node, at creation and after every update. This module writes that config, read-only:
it looks at the federation secret's metadata (never its value), the stacks, and the accounting head node's
live DbdPort.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, Literal

import yaml
from aws_lambda_powertools import Logger
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from slurm_multicluster import discovery, ingress, munge_secret, pairing, registry
from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput, PrerequisiteFailed
from slurm_multicluster.models import FederationName, Member, Region, StateModel
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

ClientFactory = Callable[[str, str], Any]

# Minimum ParallelCluster versions (AWS ParallelCluster user guide; pcluster 3.16 schema and validators).
MUNGE_KEY_SECRET_ARN_SINCE = "3.8.0"
EXTERNAL_SLURMDBD_SINCE = "3.10.0"  # requires MungeKeySecretArn, and excludes SlurmSettings/Database
SSM_POLICY = "AmazonSSMManagedInstanceCore"
VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
SECRET_ARN = re.compile(r"^arn:(?P<partition>aws[a-z-]*):secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$")


class SnippetRequest(BaseModel):
    """What `sam remote invoke GenerateConfigSnippetFunction --event-file events/config-snippet.json` passes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    federation: FederationName
    region: Region
    role: Literal["member", "accounting"] = "member"
    # the new cluster's VPC: its federation security group goes in the snippet (README "Network")
    vpc_id: Annotated[str, AfterValidator(lambda value: v.require(VPC_ID, value, "VPC id"))] | None = Field(
        default=None, alias="vpcId")

    @model_validator(mode="wrap")
    @classmethod
    def _refuse_as_invalid_input(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as error:
            # Field locations and messages only: never echo the (possibly hostile) input back.
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in error.errors())
            raise InvalidInput(f"invalid config snippet request: {problems}") from None


class AccountingEndpoint(StateModel):
    """Where the federation's slurmdbd listens."""

    cluster_name: str
    region: str
    host: str
    port: int


class ConfigSnippet(StateModel):
    """The snippet as YAML text (with comments) and as data, plus what it was made from."""

    federation: str
    role: Literal["member", "accounting"]
    munge_key_secret_arn: str
    accounting: AccountingEndpoint | None
    minimum_parallelcluster_version: str
    config: dict[str, Any]
    yaml: str
    notes: list[str]


# ---------------------------------------------------------------- what the snippet is made from


def federation_secret_arn(secretsmanager: Any, config: Settings, federation: str) -> str:
    """The ARN of the federation's munge key secret; PrerequisiteFailed unless it exists with an AWSCURRENT value."""
    name = config.munge_key_secret_name(federation)
    not_paired = (f"no cluster of federation {federation} has been paired yet, pair the accounting cluster first "
                  f"(the federation secret {name} {{why}})")
    described = munge_secret.describe(secretsmanager, name)
    if described is None:
        raise PrerequisiteFailed(not_paired.format(why="does not exist"))
    if munge_secret.current_version(described) is None:
        raise PrerequisiteFailed(not_paired.format(why="holds no AWSCURRENT key"))
    return v.require(SECRET_ARN, described["ARN"], "secret ARN")


def accounting_clusters(clients: ClientFactory, request: SnippetRequest, config: Settings) -> list[Member]:
    """The federation's accounting cluster as the registry declares it, when its stack is live and tagged
    (an empty list when it is not: e.g. it is about to be re-created)."""
    declared = registry.declared(clients, config, request.federation)
    stacks = discovery.federation_stacks(clients, config.regions_to_search(request.region), declared, config)
    return [discovery.member(clients, stack, region, declared, config) for region, stack in stacks
            if declared.is_accounting(stack["StackId"])]


def accounting_endpoint(clients: ClientFactory, accounting: Member, config: Settings) -> AccountingEndpoint:
    """The accounting head node's private IP and the DbdPort its slurmdbd really uses (read over SSM)."""
    slurm = pairing.read_slurm_settings(clients, accounting, config).slurm
    assert slurm is not None
    if not slurm.dbd_port or not slurm.slurmdbd_active:
        raise PrerequisiteFailed(
            f"accounting cluster {accounting.cluster_name} runs no active slurmdbd: create it with "
            "Scheduling/SlurmSettings/Database so its head node runs the federation's slurmdbd"
        )
    return AccountingEndpoint(cluster_name=accounting.cluster_name, region=accounting.region,
                              host=v.ipv4(accounting.head_node.private_ip), port=slurm.dbd_port)


# ---------------------------------------------------------------- the snippet


def _ssm_policy(secret_arn: str) -> str:
    match = SECRET_ARN.fullmatch(secret_arn)
    assert match is not None
    return f"arn:{match['partition']}:iam::aws:policy/{SSM_POLICY}"


def _srun_settings(config: Settings) -> dict[str, Any]:
    """With the federation's SrunPortRange option on, the slurm.conf line every member must run with (the pairing
    refuses a member on another range): ParallelCluster's CustomSlurmSettings, which does not deny-list it."""
    return {"CustomSlurmSettings": [{"SrunPortRange": config.srun_port_range}]} if config.srun_port_range else {}


def member_config(federation: str, secret_arn: str, accounting: AccountingEndpoint, config: Settings,
                  federation_group: str | None = None) -> dict[str, Any]:
    """Scheduling/HeadNode/Tags of a new member: the federation key and slurmdbd, SSM, the federation tag, and the
    federation security group of its VPC (when there is one) on its head node."""
    head_node: dict[str, Any] = {"Iam": {"AdditionalIamPolicies": [{"Policy": _ssm_policy(secret_arn)}]}}
    if federation_group:
        head_node["Networking"] = {"AdditionalSecurityGroups": [v.require(v.SECURITY_GROUP_ID, federation_group,
                                                                          "security group id")]}
    return {
        "Scheduling": {"SlurmSettings": {
            "MungeKeySecretArn": secret_arn,
            "ExternalSlurmdbd": {"Host": accounting.host, "Port": accounting.port},
            **_srun_settings(config),
        }},
        "HeadNode": head_node,
        "Tags": [{"Key": config.federation_tag_key, "Value": federation}],
    }


def accounting_config(federation: str, secret_arn: str, config: Settings) -> dict[str, Any]:
    """The same for re-creating the accounting cluster: its own Database stays; the registry (not a tag) makes it
    the accounting cluster, once an administrator declares the new stack's ARN."""
    return {
        "Scheduling": {"SlurmSettings": {"MungeKeySecretArn": secret_arn, **_srun_settings(config)}},
        "HeadNode": {"Iam": {"AdditionalIamPolicies": [{"Policy": _ssm_policy(secret_arn)}]}},
        "Tags": [{"Key": config.federation_tag_key, "Value": federation}],
    }


class _IndentedListDumper(yaml.SafeDumper):
    """Lists indented under their key, as in ParallelCluster's documentation."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def _with_comments(text: str, header: list[str], comments: dict[tuple[str, ...], list[str]]) -> str:
    """Put ``# `` comment lines above the keys at the given paths (same indentation) and a header on top."""
    lines = [f"# {line}".rstrip() for line in header]
    path: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        key = re.match(r"([A-Za-z][A-Za-z0-9]*):", stripped)
        if key:
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, key[1]))
            lines += [" " * indent + f"# {comment}" for comment in comments.get(tuple(k for _, k in path), [])]
        lines.append(line)
    return "\n".join(lines) + "\n"


def render(snippet: dict[str, Any], header: list[str], comments: dict[tuple[str, ...], list[str]]) -> str:
    """The snippet as commented YAML (comments are only for the reader: the YAML parses to ``snippet``)."""
    text = yaml.dump(snippet, Dumper=_IndentedListDumper, sort_keys=False, default_flow_style=False, indent=2)
    return _with_comments(text, header, comments)


def _member_comments(federation: str, accounting: AccountingEndpoint, config: Settings) -> tuple[list[str], dict]:
    header = [
        f"slurm-multicluster: a new MEMBER of federation {federation}. Needs AWS ParallelCluster >= {EXTERNAL_SLURMDBD_SINCE}.",
        "Merge these keys into your cluster config, then `pcluster create-cluster`. ParallelCluster writes the",
        "accounting and munge settings itself, at creation and on every `pcluster update-cluster`: nothing to re-apply.",
    ]
    comments = {
        ("Scheduling",): [
            "Also add the same AmazonSSMManagedInstanceCore policy to every queue's Iam/AdditionalIamPolicies",
            "(key rotation reaches compute nodes through SSM).",
        ],
        ("Scheduling", "SlurmSettings", "MungeKeySecretArn"): [
            f"The federation's munge key (ParallelCluster >= {MUNGE_KEY_SECRET_ARN_SINCE}): every node of this cluster gets it",
            "at boot and after updates. ParallelCluster gives the head node role GetSecretValue on this secret.",
        ],
        ("Scheduling", "SlurmSettings", "ExternalSlurmdbd"): [
            f"Account to the federation's slurmdbd on {accounting.cluster_name}'s head node (ParallelCluster >= "
            f"{EXTERNAL_SLURMDBD_SINCE}).",
            "Replaces Scheduling/SlurmSettings/Database: do not set both. Port is the DbdPort that slurmdbd listens on.",
        ],
        ("Scheduling", "SlurmSettings", "CustomSlurmSettings"): [
            f"Federation {federation}'s SrunPortRange option (interactive srun/salloc -M): every member runs with",
            "exactly this range, else its pairing is refused. Keep any CustomSlurmSettings you have; add this entry.",
        ],
        ("HeadNode", "Iam", "AdditionalIamPolicies"): [
            "The pairing and rotation workflows run their node scripts through SSM Run Command.",
        ],
        ("HeadNode", "Networking", "AdditionalSecurityGroups"): [
            f"Federation {federation}'s security group of this VPC: put the same group in every LoginNodes pool's and",
            "every SlurmQueues queue's Networking/AdditionalSecurityGroups, so users submit to the peers from login",
            "nodes and from jobs without a rule per cluster (it has no rules of its own; README 'Network').",
        ],
        ("Tags",): [
            f"Opts the cluster into federation {federation}: its CREATE_COMPLETE starts the pairing workflow",
            "(ingress rules between head nodes; the key and accounting already match, so nothing restarts).",
        ],
    }
    return header, comments


def _accounting_comments(federation: str, config: Settings) -> tuple[list[str], dict]:
    header = [
        f"slurm-multicluster: re-creating the ACCOUNTING cluster of federation {federation}.",
        f"Needs AWS ParallelCluster >= {MUNGE_KEY_SECRET_ARN_SINCE}. Merge these keys into your cluster config; keep your",
        "Scheduling/SlurmSettings/Database as it is (this cluster's head node runs the federation's slurmdbd).",
    ]
    comments = {
        ("Scheduling", "SlurmSettings", "MungeKeySecretArn"): [
            "The federation's munge key: the re-created cluster runs the key every member already has.",
            "ParallelCluster gives the head node role GetSecretValue on this secret.",
        ],
        ("Scheduling", "SlurmSettings", "CustomSlurmSettings"): [
            f"Federation {federation}'s SrunPortRange option (interactive srun/salloc -M): every member runs with",
            "exactly this range, else its pairing is refused. Keep any CustomSlurmSettings you have; add this entry.",
        ],
        ("HeadNode", "Iam", "AdditionalIamPolicies"): [
            "The pairing and rotation workflows run their node scripts through SSM Run Command.",
        ],
        ("Tags",): [
            f"Federation {federation}, and the role tag: this cluster's slurmdbd serves the federation.",
        ],
    }
    return header, comments


def generate(clients: ClientFactory, request: SnippetRequest, config: Settings) -> ConfigSnippet:
    """The config snippet for a new member (or a re-created accounting cluster) of ``request.federation``.

    Read-only: DescribeSecret (never the value), CloudFormation/EC2/IAM reads, and discover-slurm.sh over SSM.
    """
    accounting = accounting_clusters(clients, request, config)
    notes: list[str] = []
    if request.role == "member":
        if not accounting:
            raise PrerequisiteFailed(
                f"federation {request.federation}: its accounting cluster (the registry's accountingStackArn) is not "
                "a live, tagged stack: create and pair the accounting cluster first"
            )
        secret_region = accounting[0].region
        secret_arn = federation_secret_arn(clients("secretsmanager", secret_region), config, request.federation)
        endpoint = accounting_endpoint(clients, accounting[0], config)
        group = (ingress.federation_group(clients("ec2", request.region), request.vpc_id, request.federation,
                                          config.deployment_id) if request.vpc_id else None)
        if request.vpc_id and group is None:
            notes.append(f"no federation security group in {request.vpc_id} yet (it is created when the first member "
                         "there pairs): regenerate the snippet then; until then its nodes get a rule of their own")
        snippet = member_config(request.federation, secret_arn, endpoint, config, group)
        header, comments = _member_comments(request.federation, endpoint, config)
        minimum = EXTERNAL_SLURMDBD_SINCE
        notes.append(f"ExternalSlurmdbd/Host is {endpoint.cluster_name}'s head node IP: if that cluster is re-created, "
                     "regenerate this snippet and `pcluster update-cluster` the members (ExternalSlurmdbd updates live).")
    else:
        secret_region = accounting[0].region if accounting else request.region
        secret_arn = federation_secret_arn(clients("secretsmanager", secret_region), config, request.federation)
        endpoint = None
        snippet = accounting_config(request.federation, secret_arn, config)
        header, comments = _accounting_comments(request.federation, config)
        minimum = MUNGE_KEY_SECRET_ARN_SINCE
        notes.append("the re-created head node gets a new IP: regenerate the member snippet and `pcluster update-cluster` "
                     "every member with the new ExternalSlurmdbd/Host.")
        notes.append("the re-created stack has a new StackId: declare it as the federation's accountingStackArn in the "
                     f"registry ({registry.root(config)}/{request.federation}/settings) before it can pair.")
    if secret_region != request.region:
        notes.append(f"the federation secret is in {secret_region}, the cluster in {request.region}: if ParallelCluster "
                     "cannot read it across regions, replicate the secret there and use the replica's ARN (unverified).")
    text = render(snippet, header, comments)
    logger.info("config snippet", extra={"federation": request.federation, "role": request.role})
    return ConfigSnippet(
        federation=request.federation, role=request.role, munge_key_secret_arn=secret_arn, accounting=endpoint,
        minimum_parallelcluster_version=minimum, config=snippet, yaml=text, notes=notes,
    )
