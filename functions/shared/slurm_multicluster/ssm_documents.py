"""The node scripts as SSM Command documents with typed parameters: the one place that says how each script runs.

Why a document per script rather than AWS's generic shell document with the script as its text: SSM checks
every parameter against the document's ``allowedPattern`` (or ``allowedValues``) before any node sees the
command, so a value that could break out of its shell quoting never reaches a node even if the Lambda's own
validation were bypassed; and IAM can name the documents, so the functions may run these scripts on
ParallelCluster instances and nothing else (no root shell on every node).

Each document writes ``common.sh`` and its script into a private temp dir with quoted heredocs (no expansion),
builds the script's arguments from its parameters, each interpolated by SSM inside single quotes (which no
pattern admits), and runs the script. ``node-documents.yaml`` is generated from this module (``make documents``)
and deployed as a nested stack of template.yaml, and by hand in every other FederationRegions region.

    PYTHONPATH=functions/shared python -m slurm_multicluster.ssm_documents > node-documents.yaml
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from slurm_multicluster import validation as v
from slurm_multicluster.errors import InvalidInput

SCRIPT_DELIMITER = "SLURM_MULTICLUSTER_SCRIPT"
DOCUMENT_PREFIX = "SlurmMulticluster"
# template.yaml's DeploymentId AllowedPattern (tests/unit/test_ssm_documents.py keeps the two equal)
DEPLOYMENT_ID_PATTERN = "^[a-z][a-z0-9-]{0,23}$"
EXECUTION_TIMEOUT = "executionTimeout"
DEFAULT_EXECUTION_TIMEOUT = "600"
SWITCH_VALUES = ["true", "false"]


def script_text(name: str) -> str:
    """The verbatim text of a node script shipped in this package."""
    return resources.files("slurm_multicluster").joinpath("node_scripts", name).read_text()


def _body(pattern: re.Pattern[str]) -> str:
    """A validation.py pattern without its anchors, to combine into a document's allowedPattern."""
    return pattern.pattern.removeprefix("^").removesuffix("$")


# Pattern bodies: anchors, character classes, quantifiers and alternation only (SSM's regex dialect and
# Python's agree on these), none admitting a quote, whitespace, $, `, ;, |, &, { or }. Each mirrors the
# check the script itself applies (common.sh's RE_* and check_*); where the script also checks a range, the
# pattern spells the range out.
SECONDS_3600 = "[1-9][0-9]{0,2}|[12][0-9]{3}|3[0-5][0-9]{2}|3600"
SECONDS_60 = "[1-9]|[1-5][0-9]|60"
PORT = "[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST = f"{_OCTET}[.]{_OCTET}[.]{_OCTET}[.]{_OCTET}|{_LABEL}([.]{_LABEL})*"  # check_host: IPv4 or host name
SECRET_ID = "[A-Za-z0-9][A-Za-z0-9/_+=.@:-]{0,2047}"  # RE_SECRET_ID
REGION = "[a-z]{2}(-[a-z]+)+-[0-9]{1,2}"  # RE_REGION
SLURM_CLUSTER = "[A-Za-z0-9][A-Za-z0-9_-]{0,63}"  # RE_SLURM_CLUSTER
VERSION_STAGE = "AWSCURRENT|AWSPENDING|AWSPREVIOUS"
_UNIT = "(slurmdbd|slurmctld|slurmd)"
RESTART_UNITS = f"{_UNIT}(,{_UNIT})*"
VERSION_ID = "[A-Za-z0-9-]{32,64}"  # create-pending-munge-key.sh's RE_VERSION_ID
KEY_BYTES = "3[2-9]|[4-9][0-9]|[1-9][0-9]{2}|10[01][0-9]|102[0-4]"  # 32..1024
MUNGE_CREDENTIAL = "MUNGE:[A-Za-z0-9+/]{1,8183}={0,2}:"  # RE_MUNGE_CREDENTIAL, 8192 characters at most
KEEP_BACKUPS = "[1-9][0-9]?"  # common.sh's RE_KEEP_BACKUPS: 1..99 backup sets
BACKUP_ID = _body(v.BACKUP_ID)
SHA256 = _body(v.SHA256)


@dataclass(frozen=True)
class Parameter:
    """One typed parameter of a node document, and the script argument it becomes."""

    name: str  # the SSM parameter name, CamelCase
    flag: str  # the script's flag ("" for a positional argument)
    kind: Literal["value", "switch", "positional"]
    description: str
    pattern: str = ""  # the body of allowedPattern (value, positional); switches take allowedValues
    required: bool = False
    redacted: bool = False  # never repeat the value in an error (a munge credential authenticates for minutes)

    @property
    def allowed_pattern(self) -> str:
        """The anchored allowedPattern; an optional value may also be empty (its default: not passed)."""
        if not self.required:
            return f"^({self.pattern})?$"
        return f"^({self.pattern})$" if "|" in self.pattern else f"^{self.pattern}$"

    def accepts(self, value: str) -> bool:
        if self.kind == "switch":
            return value in SWITCH_VALUES
        return re.fullmatch(self.allowed_pattern, value) is not None

    def definition(self) -> dict[str, Any]:
        """The parameter as the document's ``parameters`` section declares it."""
        spec: dict[str, Any] = {"type": "String", "description": self.description}
        if self.kind == "switch":
            spec.update(default="false", allowedValues=list(SWITCH_VALUES))
            return spec
        if not self.required:
            spec["default"] = ""
        spec["allowedPattern"] = self.allowed_pattern
        return spec

    def shell(self) -> str:
        """The command line that adds this parameter's argument to "$@" (the value inside single quotes)."""
        ref = "{{ " + self.name + " }}"
        if self.kind == "switch":
            return f"[ '{ref}' != true ] || set -- \"$@\" {self.flag}"
        if self.kind == "positional":
            return f"set -- \"$@\" '{ref}'"
        return f"[ -z '{ref}' ] || set -- \"$@\" {self.flag} '{ref}'"

    def arguments(self, value: str) -> list[str]:
        """What the shell line adds to "$@" for this (already checked) value."""
        if self.kind == "switch":
            return [self.flag] if value == "true" else []
        if self.kind == "positional":
            return [value]
        return [self.flag, value] if value else []


@dataclass(frozen=True)
class NodeDocument:
    """A node script and its document: name suffix and parameters, in the order the script's usage lists them."""

    script: str
    suffix: str
    parameters: tuple[Parameter, ...]

    @property
    def description(self) -> str:
        """The first line of the script's usage header (``# name.sh: what it does``)."""
        return script_text(self.script).splitlines()[1].removeprefix("# ").strip()

    def parameter(self, name: str) -> Parameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise ValueError(f"{self.script} has no parameter {name!r}")


def _value(name: str, flag: str, pattern: str, description: str, required: bool = False) -> Parameter:
    return Parameter(name, flag, "value", description, pattern, required)


def _switch(name: str, flag: str, description: str) -> Parameter:
    return Parameter(name, flag, "switch", description)


_SECRET_ID = "the federation secret (name or ARN): SecretString = base64 of the key"
_REGION = "the secret's region"
_EXPECT = "the key's sha256 fingerprint; any other key is refused and nothing changes"
_BACKUP = "backup name (the workflow's execution name), see restore-backup.sh"
_DEADLINE = "seconds each daemon gets to become ready after its restart (default 120)"
_KEEP = ("after a successful change keep the newest N backup sets on the node, this one included (1..99, default 3); "
         "older ones are deleted unless changed in the last 12 h")

DOCUMENTS: dict[str, NodeDocument] = {d.script: d for d in (
    NodeDocument("discover-slurm.sh", "DiscoverSlurm", ()),
    NodeDocument("report-munge-key.sh", "ReportMungeKey", ()),
    NodeDocument("upload-munge-key.sh", "UploadMungeKey", (
        _value("SecretId", "--secret-id", SECRET_ID, "the federation secret (name or ARN); it must already exist",
               required=True),
        _value("Region", "--region", REGION, _REGION, required=True),
    )),
    NodeDocument("install-munge-key.sh", "InstallMungeKey", (
        _value("SecretId", "--secret-id", SECRET_ID, _SECRET_ID + " (head node; else FromSharedDir or FromStaged)"),
        _value("Region", "--region", REGION, _REGION),
        _value("VersionStage", "--version-stage", VERSION_STAGE, "which version to install (default AWSCURRENT)"),
        _switch("FromSharedDir", "--from-shared-dir", "take the key from the head node's NFS-shared copy "
                "(compute and login nodes)"),
        _switch("FromStaged", "--from-staged", "take the key stage-munge-key.sh staged under the same BackupId"),
        _value("ExpectSha256", "--expect-sha256", SHA256, _EXPECT, required=True),
        _value("BackupId", "--backup-id", BACKUP_ID, _BACKUP, required=True),
        _switch("SharedDirs", "--shared-dirs", "also write the shared .munge.key compute and login nodes copy "
                "(head node only)"),
        _value("Restart", "--restart", RESTART_UNITS, "Slurm daemons to restart after munge: slurmdbd, slurmctld, "
               "slurmd (comma-separated)"),
        _value("Hold", "--hold", "slurmctld", "head node: stop slurmctld before munge restarts and leave it stopped "
               "until StartHeld (a job ending meanwhile retries its completion instead of losing it)"),
        _switch("StartHeld", "--start-held", "start what a Hold under the same BackupId stopped, once this node runs "
                "the expected key"),
        _value("Deadline", "--deadline", SECONDS_3600, _DEADLINE),
        _value("KeepBackups", "--keep-backups", KEEP_BACKUPS, _KEEP),
    )),
    NodeDocument("create-pending-munge-key.sh", "CreatePendingMungeKey", (
        _value("SecretId", "--secret-id", SECRET_ID, "the federation secret (name or ARN), whose AWSCURRENT this "
               "node runs", required=True),
        _value("Region", "--region", REGION, _REGION, required=True),
        _value("VersionId", "--version-id", VERSION_ID, "the new version's id (ClientRequestToken, 32..64 of "
               "A-Za-z0-9-)", required=True),
        _value("KeyBytes", "--key-bytes", KEY_BYTES, "size of the new key, 32..1024 bytes (default 1024)"),
    )),
    NodeDocument("stage-munge-key.sh", "StageMungeKey", (
        _value("SecretId", "--secret-id", SECRET_ID, _SECRET_ID + " (head node; else FromSharedDir)"),
        _value("Region", "--region", REGION, _REGION),
        _value("VersionStage", "--version-stage", VERSION_STAGE, "which version to stage (default AWSPENDING)"),
        _switch("FromSharedDir", "--from-shared-dir", "take the key the head node staged in its NFS-shared munge "
                "dir (compute and login nodes)"),
        _value("ExpectSha256", "--expect-sha256", SHA256, _EXPECT, required=True),
        _value("BackupId", "--backup-id", BACKUP_ID, "the rotation's execution name: names the staging slot and "
               "the backup", required=True),
        _switch("SharedDirs", "--shared-dirs", "also write .munge.key.pending into the shared munge dirs "
                "(head node only)"),
    )),
    NodeDocument("set-accounting.sh", "SetAccounting", (
        _value("Host", "--host", HOST, "the slurmdbd host: a host name or an IPv4 address", required=True),
        _value("Port", "--port", PORT, "its DbdPort, 1..65535", required=True),
        _value("BackupId", "--backup-id", BACKUP_ID, _BACKUP, required=True),
        _switch("StopLocalSlurmdbd", "--stop-local-slurmdbd", "afterwards stop and disable this node's own "
                "slurmdbd, if it runs"),
        _switch("StartLocalSlurmdbd", "--start-local-slurmdbd", "first enable and start this node's own slurmdbd "
                "(Host must be this node)"),
        _value("Deadline", "--deadline", SECONDS_3600, "seconds slurmctld gets to answer scontrol ping after its "
               "restart (default 120)"),
        _value("KeepBackups", "--keep-backups", KEEP_BACKUPS, _KEEP),
    )),
    NodeDocument("remove-from-accounting.sh", "RemoveFromAccounting", (
        _value("Cluster", "--cluster", SLURM_CLUSTER, "the departed cluster's Slurm ClusterName", required=True),
        _value("BackupId", "--backup-id", BACKUP_ID, "backup name (the workflow's execution name)", required=True),
    )),
    NodeDocument("verify-member.sh", "VerifyMember", (
        _value("Peers", "--peers", f"{SLURM_CLUSTER}(,{SLURM_CLUSTER})*", "the Slurm ClusterNames of the other "
               "members to check (comma-separated)", required=True),
        _value("Deadline", "--deadline", SECONDS_3600, "give up after this many seconds (1..3600)", required=True),
        _value("Interval", "--interval", SECONDS_60, "seconds between two rounds of checks (default 1)"),
    )),
    NodeDocument("munge-credential.sh", "MungeCredential", (
        Parameter("Mode", "", "positional", "encode: a fresh credential from the local munged; decode: decode "
                  "Credential with it", "encode|decode", required=True),
        Parameter("Credential", "--credential", "value", "decode: the credential made on another node",
                  MUNGE_CREDENTIAL, redacted=True),
    )),
    NodeDocument("restore-backup.sh", "RestoreBackup", (
        _value("BackupId", "--backup-id", BACKUP_ID, "the backup to restore (the workflow's execution name)",
               required=True),
        _value("Deadline", "--deadline", SECONDS_3600, _DEADLINE),
        _switch("RestartFailed", "--restart-failed", "afterwards also restart munge and Slurm daemons in state "
                "failed, backup or not"),
        _value("Hold", "--hold", "slurmctld", "head node: leave slurmctld stopped while the nodes are switched back; "
               "a later run without it starts slurmctld"),
    )),
)}


def document(script: str) -> NodeDocument:
    """The document of a node script; ValueError for a script that has none."""
    try:
        return DOCUMENTS[script]
    except KeyError:
        raise ValueError(f"{script} is not a node script with an SSM document") from None


def document_name(deployment_id: str, script: str) -> str:
    """``SlurmMulticluster-<DeploymentId>-<Suffix>``: the script's document in this deployment."""
    if not re.fullmatch(DEPLOYMENT_ID_PATTERN, deployment_id):
        raise InvalidInput(f"invalid deployment id: {deployment_id!r} (must match {DEPLOYMENT_ID_PATTERN})")
    return f"{DOCUMENT_PREFIX}-{deployment_id}-{document(script).suffix}"


def _heredoc(name: str) -> list[str]:
    text = script_text(name)
    if SCRIPT_DELIMITER in text:
        raise ValueError(f"{name} contains the heredoc delimiter")
    if "{{" in text:  # SSM would interpolate it as a parameter reference
        raise ValueError(f"{name} contains '{{{{'")
    return [f"cat > \"$d/{name}\" <<'{SCRIPT_DELIMITER}'", *text.rstrip("\n").split("\n"), SCRIPT_DELIMITER]


# The step's timeoutSeconds: every document has it, no script sees it.
EXECUTION_TIMEOUT_PARAMETER = Parameter(EXECUTION_TIMEOUT, "", "value", "seconds the script may run before SSM "
                                        "stops it", "[0-9]{1,5}", required=True)


def _execution_timeout() -> dict[str, Any]:
    return {"type": "String", "default": DEFAULT_EXECUTION_TIMEOUT, "description": EXECUTION_TIMEOUT_PARAMETER.description,
            "allowedPattern": EXECUTION_TIMEOUT_PARAMETER.allowed_pattern}


def content(script: str) -> dict[str, Any]:
    """The script's Command document (schemaVersion 2.2): one aws:runShellScript step."""
    doc = document(script)
    run_command = [
        "set -eu",
        "d=$(mktemp -d)",
        "trap 'rm -rf \"$d\"' EXIT",
        *_heredoc("common.sh"),
        *_heredoc(script),
        "set --",
        *(parameter.shell() for parameter in doc.parameters),
        f'bash "$d/{script}" "$@"',
    ]
    return {
        "schemaVersion": "2.2",
        "description": doc.description,
        "parameters": {**{p.name: p.definition() for p in doc.parameters}, EXECUTION_TIMEOUT: _execution_timeout()},
        "mainSteps": [{
            "action": "aws:runShellScript",
            "name": doc.suffix,
            "inputs": {"timeoutSeconds": "{{ " + EXECUTION_TIMEOUT + " }}", "runCommand": run_command},
        }],
    }


def _text(parameter: Parameter, value: object) -> str:
    if parameter.kind == "switch":
        if not isinstance(value, bool):
            raise ValueError(f"{parameter.name} is a switch: pass True or False, not {value!r}")
        return "true" if value else "false"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{parameter.name} takes a string, not {value!r}")
    return str(value)


def parameters(script: str, values: dict[str, str | int | bool]) -> dict[str, list[str]]:
    """SendCommand's Parameters for the script's document, each value checked here first against the pattern
    SSM applies (InvalidInput naming the parameter); unknown or missing required names are a ValueError."""
    doc = document(script)
    sent: dict[str, list[str]] = {}
    for name, value in values.items():
        parameter = EXECUTION_TIMEOUT_PARAMETER if name == EXECUTION_TIMEOUT else doc.parameter(name)
        text = _text(parameter, value)
        if not parameter.accepts(text):
            shown = "<redacted>" if parameter.redacted else repr(text[:200])
            raise InvalidInput(f"invalid {name} for {script}: {shown} (must match {parameter.allowed_pattern})")
        if text or parameter.required:  # an empty optional value is its default: not sent
            sent[name] = [text]
    missing = [p.name for p in doc.parameters if p.required and p.name not in values]
    if missing:
        raise ValueError(f"{script} needs {', '.join(missing)}")
    return sent


def arguments(script: str, values: dict[str, str]) -> list[str]:
    """The arguments the document's command passes to the script for these (SSM-filled) parameter values."""
    doc = document(script)
    argv: list[str] = []
    for parameter in doc.parameters:
        default = "false" if parameter.kind == "switch" else ""
        argv += parameter.arguments(values.get(parameter.name, default))
    return argv


def script_of(document_name: str) -> str:
    """The node script a document name (of any deployment) runs; ValueError for another document."""
    prefix, _, suffix = document_name.rpartition("-")
    for doc in DOCUMENTS.values():
        if doc.suffix == suffix and prefix.startswith(f"{DOCUMENT_PREFIX}-"):
            return doc.script
    raise ValueError(f"{document_name} is not a node document")


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors and aliases (CloudFormation templates have none)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line if line.strip() else line for line in text.splitlines(keepends=True))


def template() -> str:
    """node-documents.yaml: one AWS::SSM::Document per node script (deployed in every region with clusters)."""
    out = [
        "# Generated from functions/shared/slurm_multicluster/ssm_documents.py by `make documents`: do not edit.",
        "# A nested stack of template.yaml (NodeDocuments); deployed by hand in every other FederationRegions region:",
        "#   sam deploy -t node-documents.yaml --region <r> --stack-name slurm-multicluster-documents --resolve-s3 \\",
        "#     --parameter-overrides DeploymentId=<id>",
        'AWSTemplateFormatVersion: "2010-09-09"',
        "Description: slurm-multicluster node scripts as SSM Command documents with typed, pattern-checked parameters",
        "",
        "Parameters:",
        "  DeploymentId:",
        "    Type: String",
        "    Default: default",
        f"    AllowedPattern: {json.dumps(DEPLOYMENT_ID_PATTERN)}",
        "    Description: The DeploymentId of the slurm-multicluster stack whose functions send these documents.",
        "",
        "Resources:",
    ]
    for doc in DOCUMENTS.values():
        body = yaml.dump(content(doc.script), Dumper=_Dumper, sort_keys=False, width=float("inf"), allow_unicode=True)
        out += [
            f"  {doc.suffix}Document:",
            "    Type: AWS::SSM::Document",
            "    Properties:",
            f'      Name: !Sub "{DOCUMENT_PREFIX}-${{DeploymentId}}-{doc.suffix}"',
            "      DocumentType: Command",
            "      DocumentFormat: JSON",
            "      UpdateMethod: NewVersion",
            "      Content:",
            _indent(body, 8).rstrip("\n"),
        ]
    out += ["", "Outputs:"]
    for doc in DOCUMENTS.values():
        out += [
            f"  {doc.suffix}DocumentName:",
            f"    Description: runs {doc.script}",
            f"    Value: !Ref {doc.suffix}Document",
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(template(), end="")
