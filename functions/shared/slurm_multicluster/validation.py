"""Strict patterns for every value that comes from outside before it reaches an API call, a shell or a path."""

from __future__ import annotations

import ipaddress
import re

from slurm_multicluster.errors import InvalidInput

# CloudFormation stack names: a letter, then letters, digits and hyphens, 128 characters at most (AWS
# CloudFormation User Guide, "Stack name"); nested stacks' generated names use all of that.
STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
# ParallelCluster cluster (= top-level stack) names: the same characters, 60 at most.
CLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,59}$")
# Slurm's ClusterName as read from a node (ParallelCluster lower-cases it; underscores are legal in Slurm).
SLURM_CLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,59}$")
FEDERATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
STACK_ARN = re.compile(
    r"^arn:aws[a-z-]*:cloudformation:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"stack/(?P<name>[A-Za-z][A-Za-z0-9-]{0,127})/[0-9a-f-]{36}$"
)
INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
LAUNCH_TEMPLATE_ID = re.compile(r"^lt-[0-9a-f]{8,17}$")
SECURITY_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
SECURITY_GROUP_RULE_ID = re.compile(r"^sgr-[0-9a-f]{8,17}$")
SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# "<file>=<sha256>" of a shared munge key copy, "<file>=" for a shared dir without one (discover-slurm.sh)
SHARED_MUNGE_KEY = re.compile(r"^/[A-Za-z0-9._/+@-]{1,255}=([0-9a-f]{64})?$")
PORT_RANGE = re.compile(r"^(?P<low>\d{1,5})(-(?P<high>\d{1,5}))?$")
# SrunPortRange as the option takes it (template parameter, registry setting): LOW-HIGH, unprivileged ports
SRUN_PORT_RANGE = re.compile(r"^\d{4,5}-\d{4,5}$")
MUNGE_CREDENTIAL = re.compile(r"^MUNGE:[A-Za-z0-9+/=]+:$")


def require(pattern: re.Pattern[str], value: object, what: str) -> str:
    """Return ``value`` if it is a string matching ``pattern``; otherwise raise InvalidInput naming ``what``."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidInput(f"invalid {what}: {value!r} (must match {pattern.pattern})")
    return value


def port_range(value: object, what: str = "port range") -> tuple[int, int]:
    """Parse ``6820-6829`` or ``6817`` into an inclusive (low, high) pair of valid TCP ports."""
    text = require(PORT_RANGE, str(value), what)
    match = PORT_RANGE.fullmatch(text)
    assert match is not None
    low = int(match["low"])
    high = int(match["high"] or low)
    if not 1 <= low <= high <= 65535:
        raise InvalidInput(f"invalid {what}: {value!r}")
    return low, high


def srun_port_range(value: object, what: str = "SrunPortRange") -> str:
    """``""`` (interactive srun/salloc -M not opened) or ``LOW-HIGH`` with 1024 <= LOW <= HIGH <= 65535, as given."""
    if value == "":
        return ""
    text = require(SRUN_PORT_RANGE, value, what)
    low, high = port_range(text, what)
    if low < 1024:
        raise InvalidInput(f"invalid {what}: {value!r} (ports 1024-65535, LOW <= HIGH)")
    return f"{low}-{high}"


def ipv4(value: object, what: str = "IPv4 address") -> str:
    """Return a dotted IPv4 address, refusing anything else (names, CIDRs, IPv6)."""
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError as error:
        raise InvalidInput(f"invalid {what}: {value!r}") from error


def ipv4_cidr(value: object, what: str = "IPv4 CIDR") -> str:
    """Return an IPv4 network in CIDR form (host bits clear), refusing anything else."""
    try:
        return str(ipaddress.IPv4Network(str(value), strict=True))
    except ValueError as error:
        raise InvalidInput(f"invalid {what}: {value!r}") from error
