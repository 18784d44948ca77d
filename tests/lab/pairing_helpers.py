"""Helpers for the workflow tests on real daemons (shared by the pairing test modules)."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import time
from typing import Any, Callable

import boto3

from lab import ClusterSpec, Lab, cloud
from lab.bridge import LabCloud
from lab.core import DEFAULT_BASE, scoped_name
from lab_helpers import submit, wait_until

FEDERATION = "hpc"
ALPHA_TAGS = {"slurm-multicluster:federation": FEDERATION, "slurm-multicluster:role": "accounting"}
BETA_TAGS = {"slurm-multicluster:federation": FEDERATION}
KEY = "/etc/munge/munge.key"
SHARED_KEY = "/opt/parallelcluster/shared/.munge/.munge.key"
ACCOUNTING_CONF = "/opt/slurm/etc/slurm_parallelcluster.conf"


@contextlib.contextmanager
def fresh_lab(base_name: str, subnet: str, clusters: list[ClusterSpec]):
    """A lab of this run's own (named `<base_name>-<run id>`), down again afterwards whatever happens."""
    name = scoped_name(base_name)
    the_lab = Lab(name, subnet, clusters, root=DEFAULT_BASE / name)
    try:
        the_lab.up()  # inside the try: an up that fails half-way must not leave daemons running
        yield the_lab
    finally:
        the_lab.down()


def key_bytes(lab: Lab, node: str, path: str = KEY) -> bytes:
    """Read a munge key for the secret scan (kept in memory, never printed)."""
    return base64.b64decode(lab.exec(node, ["base64", "-w0", path], check=True).stdout)


def daemon(lab: Lab, node: str, unit: str) -> str:
    """The running instance of a unit (pid and start time): changes exactly when the daemon restarts."""
    return lab.exec(node, ["cat", f"/run/lab/{unit}.pid"], check=True).stdout.strip()


def our_rules(region: str = "us-east-1") -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name=region)
    return ec2.describe_security_group_rules(
        Filters=[{"Name": "tag:slurm-multicluster:federation", "Values": [FEDERATION]}])["SecurityGroupRules"]


def eni_groups(instance_id: str, region: str = "us-east-1") -> set[str]:
    """The security groups on an instance's network interface (where the pairing attaches the federation group)."""
    interfaces = boto3.client("ec2", region_name=region).describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["NetworkInterfaces"]
    return {g["GroupId"] for eni in interfaces for g in eni["Groups"]}


def rule_sources(rules: list[dict[str, Any]]) -> dict[str, list[tuple[tuple[int, int], str]]]:
    """Target group -> sorted [((from port, to port), source group or prefix list)] of our rules."""
    by_target: dict[str, list[tuple[tuple[int, int], str]]] = {}
    for r in rules:
        source = r.get("ReferencedGroupInfo", {}).get("GroupId") or r.get("PrefixListId") or r.get("CidrIpv4")
        by_target.setdefault(r["GroupId"], []).append(((r["FromPort"], r["ToPort"]), source))
    return {group: sorted(sources) for group, sources in by_target.items()}


def prefix_list_entries(prefix_list_id: str, region: str) -> list[str]:
    entries = boto3.client("ec2", region_name=region).get_managed_prefix_list_entries(PrefixListId=prefix_list_id)
    return sorted(e["Cidr"] for e in entries["Entries"])


def subnet_cidr(instance_id: str, region: str) -> str:
    ec2 = boto3.client("ec2", region_name=region)
    subnet = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["SubnetId"]
    return ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["CidrBlock"]


def sacctmgr_clusters(lab: Lab, node: str) -> dict[str, str]:
    out = lab.exec(node, ["sacctmgr", "-nP", "show", "clusters", "format=cluster,controlhost"], check=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line.strip())


def run_logged(cloud: LabCloud, execution_input: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], str]:
    """Run the workflow with the Lambdas' log lines captured (for the secret scan, not for printing)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = cloud.run(execution_input, **kwargs)
    return result, buffer.getvalue()


def events_queue(region: str = "us-east-1") -> str:
    """An SQS queue receiving every event this product publishes (to assert on them)."""
    return cloud.events_queue(region)


def published(queue: str, region: str = "us-east-1") -> list[dict[str, Any]]:
    return cloud.published(queue, region)


def wait_job_completed_on(lab: Lab, node: str, cluster: str, job_id: int) -> dict[str, str]:
    def check():
        out = lab.exec(node, ["scontrol", "-M", cluster, "show", "job", str(job_id), "--oneliner"]).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        assert fields.get("JobState") not in ("FAILED", "CANCELLED", "NODE_FAIL"), fields
        return fields if fields.get("JobState") == "COMPLETED" else None

    return wait_until(check, 60, f"job {job_id} on {cluster} COMPLETED")


def assert_absent(key: bytes, text: str) -> None:
    """No 24-byte window of the key, raw, base64 (any alignment) or hex, appears in text."""
    raw = text.encode("utf-8", "surrogateescape")
    encoded = base64.b64encode(key).decode()
    for start in range(0, len(key) - 24, 24):
        window = key[start:start + 24]
        assert window not in raw, "raw munge key bytes leaked"
        assert window.hex() not in text, "hex munge key leaked"
    for start in range(0, len(encoded) - 32, 32):
        assert encoded[start:start + 32] not in text, "base64 munge key leaked"


def jobs_in_every_direction(lab: Lab, clusters: list[str]) -> dict[str, dict[str, str]]:
    """From every head node to every other cluster: submitted with sbatch -M, completed on its compute node.

    First waits until every cluster is reachable from every head: `-M` resolves a cluster through slurmdbd,
    which has no ControlHost for a slurmctld that restarted moments ago and has not registered again."""
    for src in clusters:
        for dst in clusters:
            if src != dst:
                wait_until(lambda src=src, dst=dst: lab.exec(f"{src}-head", [
                    "sbatch", f"--clusters={dst}", "--test-only", "--wrap", "true"]).returncode == 0,
                    60, f"{dst} reachable with sbatch -M from {src}")
    submitted = {(src, dst): submit(lab, f"{src}-head", f"--clusters={dst}", "--wrap", "hostname")
                 for src in clusters for dst in clusters if src != dst}
    return {f"{src}->{dst}": wait_job_completed_on(lab, f"{src}-head", dst, job) for (src, dst), job in submitted.items()}


def opt_in(cloud: LabCloud, cluster: str) -> None:
    """The admin adds the federation tag to an existing cluster and admits it in the registry."""
    cloud.opt_in(cluster, BETA_TAGS)


# a batch job that runs until the test releases it, then marks that its script ended (end_job_before_node_switches)
ENDING = "while [ ! -e /tmp/release-{tag} ]; do sleep 0.2; done; hostname; touch /tmp/ended-{tag}"


def end_job_before_node_switches(lab: Lab, cluster: str, job_id: int, seen: list[str], document: str = "InstallMungeKey"
                                 ) -> Callable[[str, cloud.RunCommand], None]:
    """A LabCloud.before_command hook: right before ``cluster``'s compute node installs a munge key (its head node
    already runs it; ``document="RestoreBackup"``: restores its backup, its head node already restored), let the
    cluster's ENDING job end, and wait until its slurmstepd has reported the end (gone) or cannot reach slurmctld
    (down), so the job ends exactly while head and node disagree. Never raises: the job's outcome is what tests
    assert. What it saw is appended to ``seen`` (once)."""
    compute = f"{cluster}-compute-1"

    def hook(node: str, command: cloud.RunCommand) -> None:
        if seen or node != compute or not command.document_name.endswith(f"-{document}"):
            return
        lab.exec(node, ["touch", f"/tmp/release-{cluster}"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ended = lab.exec(node, ["test", "-e", f"/tmp/ended-{cluster}"]).returncode == 0
            stepd = lab.exec(node, ["scontrol", "listpids", str(job_id)]).stdout.strip().splitlines()[1:]
            ctld_down = lab.exec(f"{cluster}-head", ["systemctl", "is-active", "--quiet", "slurmctld"]).returncode != 0
            if ended and (not stepd or ctld_down):
                seen.append("reported" if not stepd else "slurmctld down")
                return
            time.sleep(0.2)
        seen.append("undecided after 30 s")
    return hook
