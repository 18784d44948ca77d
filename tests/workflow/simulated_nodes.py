"""Cluster nodes simulated in Python, behind the real SSM seam, for moto workflow tests of the key rotation.

The node scripts themselves are tested against real munged in tests/node_scripts and against real Slurm daemons
in tests/lab. Here the workflow is under test: the real ASL runs in moto, the real Lambdas run in-process, and
each SSM command reaches a simulated node that keeps what the real scripts keep (the fingerprint of the key
munge runs, staged copies, backups per backup id, whether slurmctld runs) and answers with the JSON line the
real script prints. The accounting head node talks to moto's Secrets Manager itself, as the real script does
with its instance role, so the secret's staging labels move exactly as in a real rotation.

Faults: ``fail[(node, script)] = "message"`` makes that script fail on that node (after rolling itself back,
as the real scripts do); ``slurmctld_dies_after_switch`` holds clusters whose slurmctld dies once switched.
``switch_barrier`` makes every head node wait inside its switch until all members' switches have started.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import boto3

from lab.cloud import RunCommand
from slurm_multicluster import ssm_documents

_clients = threading.Lock()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SimulatedNode:
    name: str
    cluster: str
    role: str  # "head" | "compute"
    instance_id: str
    key_sha: str  # the key munged runs
    shared_sha: str | None = None  # head: the NFS-shared .munge.key compute nodes boot with
    shared_pending_sha: str | None = None  # head: .munge.key.pending
    staged: dict[str, str] = field(default_factory=dict)  # backup id -> staged key fingerprint
    backups: dict[str, dict[str, str | None]] = field(default_factory=dict)  # backup id -> state before it
    slurmctld_up: bool = True
    # head: its slurmctld registered with the federation's slurmdbd (a slurmctld restarted while that slurmdbd did
    # not share its key stays unregistered: "Association database appears down", seen on real daemons)
    registered: bool = True
    restarts: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # head: backup ids whose switch holds slurmctld stopped
    srun_port_range: str | None = None  # head: slurm.conf's SrunPortRange (None: unset, srun uses ephemeral ports)
    slurmd_port: int = 6818  # head: slurm.conf's SlurmdPort
    queue_subnet_ids: list[str] = field(default_factory=list)  # head: fleet-config.json's queue subnets


class SimulatedFederation:
    """Every node of every cluster, addressed by instance id as SSM addresses them."""

    def __init__(self, region: str, accounting: str, ips: dict[str, str]):
        self.region = region
        self.accounting = accounting
        self.ips = ips  # cluster -> head node ip
        self.nodes: dict[str, SimulatedNode] = {}
        self.keys: list[bytes] = []  # every key that existed (for the leak scans), never printed
        self.fail: dict[tuple[str, str], str] = {}
        self.slurmctld_dies_after_switch: set[str] = set()
        self.keeps_old_key: set[str] = set()  # nodes whose install reports the new key while munged keeps the old
        self.switch_barrier: threading.Barrier | None = None
        self.switch_gate: threading.Event | None = None
        self.switch_started = threading.Event()
        self.calls: list[tuple[float, str, str]] = []  # (time, node, script)
        self.finished: list[tuple[float, str, str]] = []  # (time, node, script) once the script returned
        self.labels_during_switch: dict[str, list[str]] | None = None
        self.secret_id = ""
        self.after_head_switch: list[Callable[[str], None]] = []  # called with the cluster, once its head switched
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- set-up

    def add(self, node: SimulatedNode) -> None:
        self.nodes[node.instance_id] = node

    def knows(self, instance_id: str) -> bool:
        return instance_id in self.nodes

    def node(self, name: str) -> SimulatedNode:
        return next(n for n in self.nodes.values() if n.name == name)

    def head(self, cluster: str) -> SimulatedNode:
        return self.node(f"{cluster}-head")

    def of(self, cluster: str) -> list[SimulatedNode]:
        return [n for n in self.nodes.values() if n.cluster == cluster]

    def _secrets(self) -> Any:
        with _clients:
            return boto3.client("secretsmanager", region_name=self.region)

    # ---------------------------------------------------------------- the SSM executor

    def execute(self, command: RunCommand) -> tuple[int, str, str]:
        node = self.nodes[command.instance_id]
        # the document says which script runs; its parameters become the script's arguments as its command builds them
        script = ssm_documents.script_of(command.document_name)
        args = ssm_documents.arguments(script, command.parameters)
        with self._lock:
            self.calls.append((time.monotonic(), node.name, script))
        handler = getattr(self, "_" + script.removesuffix(".sh").replace("-", "_"))
        result = handler(node, args)
        with self._lock:
            self.finished.append((time.monotonic(), node.name, script))
        failure = self.fail.get((node.name, script))
        if failure and result.get("ok"):
            result = {"ok": False, "changed": False, "error": failure, "rolledBack": True}
        return (0 if result.get("ok") else 1), json.dumps(result) + "\n", ""

    @staticmethod
    def _flags(args: list[str]) -> dict[str, str | bool]:
        flags: dict[str, str | bool] = {}
        i = 0
        while i < len(args):
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                flags[args[i]] = args[i + 1]
                i += 2
            else:
                flags[args[i]] = True
                i += 1
        return flags

    # ---------------------------------------------------------------- scripts

    def _discover_slurm(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        accounting = node.cluster == self.accounting
        return {
            "ok": True, "changed": False, "clusterName": node.cluster, "slurmctldPort": "6820-6829",
            "accountingStorageType": "accounting_storage/slurmdbd", "accountingStorageHost": self.ips[self.accounting],
            "accountingStoragePort": 6819, "dbdPort": 6819 if accounting else None, "slurmdbdUnit": accounting,
            "slurmdbdActive": accounting, "slurmctldActive": node.slurmctld_up, "mungeActive": True,
            "slurmVersion": "22.05.8", "slurmdbdVersion": "22.05.8" if accounting else None,
            "mungeVersion": "0.5.15", "mungeKeySha256": node.key_sha,
            "slurmdPort": node.slurmd_port, "srunPortRange": node.srun_port_range,
            "queueSubnetIds": node.queue_subnet_ids,
        }

    def _create_pending_munge_key(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        flags = self._flags(args)
        secrets, secret, version = self._secrets(), str(flags["--secret-id"]), str(flags["--version-id"])
        current = secrets.get_secret_value(SecretId=secret, VersionStage="AWSCURRENT")
        current_sha = sha256(base64.b64decode(current["SecretString"]))
        if current_sha != node.key_sha:
            return {"ok": False, "changed": False, "error": "the secret's AWSCURRENT is not the key this node runs"}
        base = {"currentSha256": current_sha, "currentVersionId": current["VersionId"], "versionId": version}
        try:
            existing = secrets.get_secret_value(SecretId=secret, VersionId=version)
            key = base64.b64decode(existing["SecretString"])
            return {"ok": True, "changed": False, "sha256": sha256(key), "keyBytes": len(key), **base}
        except secrets.exceptions.ResourceNotFoundException:
            pass
        key = os.urandom(int(flags.get("--key-bytes", "1024")))
        self.keys.append(key)
        secrets.put_secret_value(SecretId=secret, ClientRequestToken=version,
                                 SecretString=base64.b64encode(key).decode(), VersionStages=["AWSPENDING"])
        return {"ok": True, "changed": True, "sha256": sha256(key), "keyBytes": len(key), **base}

    def _stage_munge_key(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        flags = self._flags(args)
        expect, backup = str(flags["--expect-sha256"]), str(flags["--backup-id"])
        if flags.get("--from-shared-dir"):
            sha = self.head(node.cluster).shared_pending_sha
        else:
            value = self._secrets().get_secret_value(SecretId=str(flags["--secret-id"]),
                                                     VersionStage=str(flags.get("--version-stage", "AWSPENDING")))
            sha = sha256(base64.b64decode(value["SecretString"]))
        if sha != expect:
            return {"ok": False, "changed": False, "error": f"fingerprint mismatch: {sha}, expected {expect}"}
        node.backups.setdefault(backup, {"key": node.key_sha, "shared": node.shared_sha})
        node.staged[backup] = sha
        if flags.get("--shared-dirs"):
            node.shared_pending_sha = sha
        return {"ok": True, "changed": True, "sha256": sha, "stagedFiles": ["staged"], "source": "simulated"}

    def _install_munge_key(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        flags = self._flags(args)
        expect, backup = str(flags["--expect-sha256"]), str(flags["--backup-id"])
        if flags.get("--start-held"):  # after the fleet's switch: the slurmctld the switch held starts again
            if node.key_sha != expect:
                return {"ok": False, "changed": False, "error": f"nothing staged under {backup}"}
            started = [backup] if backup in node.held else []
            node.held.discard(backup)
            node.restarts += ["slurmctld"] * len(started)
            return {"ok": True, "changed": bool(started), "sha256": expect,
                    "restarted": ["slurmctld"] if started else [], "held": []}
        if node.role == "head":
            if self.labels_during_switch is None:
                self.labels_during_switch = self._secrets().describe_secret(SecretId=self.secret_id)["VersionIdsToStages"]
            self.switch_started.set()
            if self.switch_barrier is not None and node.cluster != self.accounting:
                self.switch_barrier.wait()  # every peer's switch runs at the same time, or this times out
            if self.switch_gate is not None:
                self.switch_gate.wait(timeout=60)
        if flags.get("--from-shared-dir"):  # a node launched during a rotation: the key its head node shares
            shared = self.head(node.cluster).shared_sha
            if shared != expect:
                return {"ok": False, "changed": False, "error": f"fingerprint mismatch: {shared}, expected {expect}"}
            if node.key_sha == expect:
                return {"ok": True, "changed": False, "sha256": expect, "restarted": []}
            node.staged[backup] = shared
        staged = node.staged.get(backup)
        if staged is None and node.key_sha == expect:
            return {"ok": True, "changed": False, "sha256": expect, "restarted": []}
        if staged != expect:
            return {"ok": False, "changed": False, "error": f"nothing staged under {backup}"}
        if (node.name, "install-munge-key.sh") in self.fail:
            return {"ok": False, "changed": True, "rolledBack": True, "error": self.fail[(node.name, "install-munge-key.sh")]}
        node.backups.setdefault(backup, {"key": node.key_sha, "shared": node.shared_sha})
        if node.name not in self.keeps_old_key:
            node.key_sha = staged
        del node.staged[backup]
        restarted = ["munge"]
        if node.role == "head":
            node.shared_sha = staged
            node.shared_pending_sha = None
            if flags.get("--hold") == "slurmctld":  # stopped until --start-held
                node.held.add(backup)
                restarted += ["slurmdbd"] if node.cluster == self.accounting else []
            else:
                restarted += ["slurmdbd", "slurmctld"] if node.cluster == self.accounting else ["slurmctld"]
            if node.cluster in self.slurmctld_dies_after_switch:
                node.slurmctld_up = False
            self._register(node)
        else:
            restarted.append("slurmd")
        node.restarts += restarted
        if node.role == "head":
            for callback in self.after_head_switch:
                callback(node.cluster)
        return {"ok": True, "changed": True, "sha256": staged, "restarted": restarted}

    def _restore_backup(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        flags = self._flags(args)
        backup = str(flags["--backup-id"])
        before = node.backups.get(backup)
        restarted: list[str] = []
        changed = False
        if before is not None:
            if node.key_sha != before["key"]:
                node.key_sha = str(before["key"])
                restarted += ["munge", "slurmctld" if node.role == "head" else "slurmd"]
            node.shared_sha = before["shared"]
            changed = bool(restarted) or backup in node.staged or node.shared_pending_sha is not None
            node.staged.pop(backup, None)
            node.shared_pending_sha = None
        if flags.get("--hold") == "slurmctld" and node.role == "head":  # stopped until a run without --hold
            if "munge" in restarted:  # only when the key went back (as the script: before munge restarts)
                node.held.add(backup)
            restarted = [u for u in restarted if u != "slurmctld"]
        elif backup in node.held:  # restore-backup.sh starts a slurmctld a hold stopped
            node.held.discard(backup)
            if "slurmctld" not in restarted:
                restarted.append("slurmctld")
        if flags.get("--restart-failed") and not node.slurmctld_up and not flags.get("--hold"):
            node.slurmctld_up = True
            restarted.append("slurmctld")
        if node.role == "head" and "slurmctld" in restarted:
            node.slurmctld_up = True
            self._register(node)
        node.restarts += restarted
        return {"ok": True, "changed": changed or bool(restarted), "found": before is not None, "restarted": restarted}

    def _register(self, head: SimulatedNode) -> None:
        """A head node's slurmctld (re)started: it registers only if the federation's slurmdbd runs its key now."""
        head.registered = head.cluster == self.accounting or self.head(self.accounting).key_sha == head.key_sha

    def _report_munge_key(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        return {"ok": True, "changed": False, "mungeKeySha256": node.key_sha, "mungeActive": True}

    def _verify_member(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        peers = str(self._flags(args)["--peers"]).split(",")
        problems = []
        if not node.slurmctld_up:
            problems.append("slurmctld does not answer scontrol show config")
        for peer in peers:
            head = self.head(peer)
            if not head.slurmctld_up or not head.registered or head.key_sha != node.key_sha:
                problems.append(f"cluster {peer} has no ControlHost (its slurmctld is not connected to slurmdbd)")
                problems.append(f"sbatch --clusters={peer} --test-only fails")
        bad = [f"{n.name} down*" for n in self.of(node.cluster) if n.role == "compute" and n.key_sha != node.key_sha]
        if bad:
            problems.append(f"nodes not usable: {' '.join(bad)}")
        result: dict[str, Any] = {"ok": not problems, "changed": False, "cluster": node.cluster, "badNodes": bad,
                                  "mungeKeySha256": node.key_sha}
        if problems:
            result["error"] = "not verified within the deadline: " + "; ".join(problems)
        return result

    def _munge_credential(self, node: SimulatedNode, args: list[str]) -> dict[str, Any]:
        if args[0] == "encode":
            # stands for a credential signed with the node's key: it carries the key's fingerprint, not the key
            token = base64.b64encode(json.dumps({"sha": node.key_sha, "t": time.time()}).encode()).decode()
            return {"ok": True, "changed": False, "credential": f"MUNGE:{token}:"}
        credential = str(self._flags(args[1:])["--credential"])
        signed_with = json.loads(base64.b64decode(credential.split(":")[1]))["sha"]
        decoded = signed_with == node.key_sha
        return {"ok": True, "changed": False, "decoded": decoded,
                "status": "Success (0)" if decoded else "Invalid credential"}
