"""Putting one member's nodes back on what they ran before a workflow changed them (the pairing's and the
rotation's compensation): restore-backup.sh under the execution's backup id, head node first.

slurmctld stays down while the compute and login nodes switch back (``--hold slurmctld``): a job that ends on a
node still on the other key reports its end to slurmctld once, and a slurmctld on the restored key would refuse
that report and keep the job RUNNING for good (seen on real daemons); a slurmctld that is down makes slurmstepd
retry until it answers. The head node's second run starts it whatever became of the nodes."""

from __future__ import annotations

from typing import Any, Callable

from slurm_multicluster import discovery, node_commands
from slurm_multicluster.errors import PairingError
from slurm_multicluster.models import Member
from slurm_multicluster.settings import Settings

ClientFactory = Callable[[str, str], Any]


def restore_member(clients: ClientFactory, member: Member, backup_id: str, config: Settings, *,
                   previous_sha256: str | None, restart_failed: bool) -> tuple[dict[str, Any], list[str]]:
    """Restore backup ``backup_id`` on the member's nodes: the head node (holding slurmctld), then every compute
    and login node running now, then slurmctld on the head node again. Every node is tried.

    A node shut down meanwhile is no failure. One launched since the plan (no backup of this run) copies the key
    from the shared dir the head node's restore just put back, when ``previous_sha256`` says which key that is.
    ``restart_failed`` also restarts daemons found in state failed. Returns (node -> summary, failures)."""
    ssm, ec2 = clients("ssm", member.region), clients("ec2", member.region)
    parameters: dict[str, Any] = {"BackupId": backup_id, **({"RestartFailed": True} if restart_failed else {})}
    known = set(member.compute_instance_ids + member.login_instance_ids)
    nodes: dict[str, Any] = {}
    failures: list[str] = []

    def attempt(instance_ids: list[str], script: str, script_parameters: dict[str, Any], what: str,
                fleet: bool = True) -> None:
        """Run ``script`` on ``instance_ids``; a fleet node gone meanwhile is no failure (the head node is)."""
        try:
            results = node_commands.run_script(
                ssm, instance_ids, script, script_parameters, timeout_seconds=config.node_command_timeout_seconds,
                comment=f"slurm-multicluster: switch {member.cluster_name} {what} back ({backup_id})",
                gone_check=node_commands.fleet_check(ec2) if fleet else None,
            )
        except PairingError as error:
            failures.append(f"{what}: {error}")
            return
        nodes.update(node_commands.summary(results))
        failures.extend(f"{i}: {r.result.get('error') or r.status}" for i, r in results.items() if not r.ok and not r.gone)

    head = [member.head_node.instance_id]
    attempt(head, "restore-backup.sh", {**parameters, "Hold": "slurmctld"}, "head node", fleet=False)
    head_restore = nodes.get(head[0], {})
    running = sorted(discovery.fleet(clients, member))
    online = discovery.ssm_online(ssm, running) if running else set()
    if running:
        attempt([i for i in running if i in online or i in known], "restore-backup.sh", parameters, "compute nodes")
    launched = [i for i, n in nodes.items() if i in running and i not in known and n.get("found") is False]
    if launched and previous_sha256 and not failures:
        attempt(launched, "install-munge-key.sh", {
            "FromSharedDir": True, "ExpectSha256": previous_sha256, "BackupId": backup_id, "Restart": "slurmd",
        }, "nodes launched meanwhile")
    # whatever happened to the nodes: slurmctld runs again (restore-backup.sh starts what the hold stopped)
    attempt(head, "restore-backup.sh", parameters, "head node's slurmctld", fleet=False)
    if head_restore:
        nodes[head[0]] = node_commands.and_then(head_restore, nodes.get(head[0], {}))
    return nodes, failures
