"""The pairing steps as plain functions: the Lambda handlers are thin adapters over these."""

from __future__ import annotations

from typing import Any, Callable

from aws_lambda_powertools import Logger

from slurm_multicluster import discovery, ingress, munge_secret, node_commands, node_rollback, registry, slurm_versions
from slurm_multicluster import validation as v
from slurm_multicluster.errors import PrerequisiteFailed, VerificationFailed
from slurm_multicluster.models import IngressRule, Member, PairingRequest, SlurmSettings, StateModel
from slurm_multicluster.settings import Settings

logger = Logger(child=True)

ClientFactory = Callable[[str, str], Any]


class Discovery(StateModel):
    """Who the cluster is and who its federation peers are (AWS side only)."""

    member: bool
    reason: str
    not_admitted: bool = False  # tagged (it asks to join) but the registry does not admit it
    federation: str | None = None
    cluster_name: str
    stack_id: str | None = None
    members: list[Member] = []
    skipped: list[discovery.SkippedMember] = []  # admitted peers left out (no head node, no SSM, a claimed name)


class KeyPlan(StateModel):
    secret_name: str
    create_secret_value_from: str | None = None  # accounting cluster uploading its key when the secret is empty
    expected_sha256: str
    install_on_head: bool
    head_key_differs: bool = False  # the head node runs another key (else only shared copies or nodes do)
    install_on_instances: list[str] = []  # compute and login nodes not on the federation key
    stale_shared_copies: list[str] = []  # shared copies (compute and login nodes boot from) not holding it


class AccountingPlan(StateModel):
    file: str | None
    current_host: str | None
    current_port: int | None
    host: str
    port: int
    change: bool
    stop_local_slurmdbd: bool


class Plan(StateModel):
    """Exactly what a pairing will change; a dryRun returns this and stops."""

    federation: str
    cluster_name: str
    stack_id: str
    slurm_cluster_name: str
    accounting_cluster: str
    accounting_stack_id: str
    peers: list[str]
    ingress_rules: list[IngressRule]  # the missing rules only
    network: ingress.NetworkPlan | None = None  # federation groups, attachments, prefix-list entries, rule budget
    munge_key: KeyPlan
    accounting: AccountingPlan | None
    restarts: list[str]
    already_paired: bool


NOT_ADMITTED_METRIC = "ClusterNotAdmitted"


def discover(clients: ClientFactory, request: PairingRequest, config: Settings) -> Discovery:
    """Find the stack, decide membership (its tag asks, the registry admits), describe every admitted member."""
    stack = discovery.describe_stack(clients("cloudformation", request.region), request.stack_id or request.stack_name)
    if stack is None:
        return Discovery(member=False, reason="stack not found", cluster_name=request.stack_name)
    federation, reason = discovery.membership(stack, config)
    if federation is None:
        logger.info("not a federation member", extra={"stack": request.stack_name, "reason": reason})
        return Discovery(member=False, reason=reason, cluster_name=request.stack_name)
    declared = registry.federation(clients("ssm", config.deployment_region), config, federation)
    admission = declared.admission(stack["StackId"]) if declared else None
    if declared is None or admission is None:
        reason = (f"not admitted: federation {federation} is not declared in the registry ({registry.root(config)})"
                  if declared is None else
                  f"not admitted: no registry entry or admission rule of federation {federation} admits {stack['StackId']}")
        logger.warning("tagged cluster not admitted: nothing changes", extra={"stack": stack["StackId"], "reason": reason})
        return Discovery(member=False, not_admitted=True, reason=reason, federation=federation,
                         cluster_name=request.stack_name, stack_id=stack["StackId"])
    stacks = discovery.federation_stacks(clients, config.regions_to_search(request.region), declared, config)
    if not any(s["StackId"] == stack["StackId"] for _, s in stacks):
        stacks.append((request.region, stack))
    members, skipped = discovery.resolvable_members(clients, stacks, declared, config, required=stack["StackId"])
    return Discovery(member=True, reason=admission, federation=federation, cluster_name=request.stack_name,
                     stack_id=stack["StackId"], members=members, skipped=skipped)


def federation_settings(clients: ClientFactory, federation: str, config: Settings) -> Settings:
    """The deployment's settings with the registry's overrides for ``federation`` (when it is declared)."""
    declared = registry.federation(clients("ssm", config.deployment_region), config, federation)
    return declared.settings(config) if declared else config


def read_slurm_settings(clients: ClientFactory, member: Member, config: Settings) -> Member:
    """Ask the member's head node for its live Slurm settings (read-only)."""
    settings = head_slurm_settings(clients, member.region, member.head_node.instance_id, member.cluster_name)
    return member.model_copy(update={"slurm": settings})


SETTINGS_READ_SECONDS = 120  # discover-slurm.sh's own waits (scontrol, sacctmgr: 20 s each) and SSM's delivery


def head_slurm_settings(clients: ClientFactory, region: str, instance_id: str, cluster_name: str) -> SlurmSettings:
    """discover-slurm.sh on one head node (read-only): its live Slurm settings, validated."""
    results = node_commands.run_script_checked(
        clients("ssm", region), [instance_id], "discover-slurm.sh", {},
        timeout_seconds=SETTINGS_READ_SECONDS, comment=f"slurm-multicluster: read Slurm settings of {cluster_name}",
    )
    return SlurmSettings.model_validate(results[instance_id].result)


def _requested(request: PairingRequest, members: list[Member]) -> Member:
    """The member the request is about: by StackId (events, the sweep), else by name and region (by hand)."""
    return next(m for m in members if m.stack_id == request.stack_id or
                (request.stack_id is None and m.cluster_name == request.stack_name and m.region == request.region))


def _split(request: PairingRequest, members: list[Member]) -> tuple[Member, Member, list[Member]]:
    new = _requested(request, members)
    accounting = [m for m in members if m.is_accounting]
    if len(accounting) != 1:
        raise PrerequisiteFailed(
            f"federation {new.federation}: its accounting cluster (the registry's accountingStackArn) is not a live, "
            "tagged stack with a running head node: create it, or declare the federation's accounting cluster anew"
        )
    peers = [m for m in members if m.stack_id != new.stack_id]
    return new, accounting[0], peers


def check_prerequisites(request: PairingRequest, members: list[Member], config: Settings | None = None) -> list[str]:
    """Every check that must pass before anything changes; raises PrerequisiteFailed with all problems.
    ``config``: the federation's settings (registry overrides applied), for its SrunPortRange option."""
    new, accounting, peers = _split(request, members)
    problems = []
    passed = [f"exactly one accounting cluster: {accounting.cluster_name}"]
    assert accounting.slurm and new.slurm
    if not accounting.slurm.dbd_port or not accounting.slurm.slurmdbd_active:
        problems.append(
            f"accounting cluster {accounting.cluster_name} runs no active slurmdbd: create it with "
            "Scheduling/SlurmSettings/Database so its head node runs slurmdbd"
        )
    dbd_version = accounting.slurm.slurmdbd_version or accounting.slurm.slurm_version
    for member in members:
        assert member.slurm
        why = slurm_versions.incompatibility(member.slurm.slurm_version, dbd_version)
        if why:
            problems.append(f"{member.cluster_name} cannot use the federation's slurmdbd on "
                            f"{accounting.cluster_name}: {why}")
    passed.append(f"slurmdbd {dbd_version} accepts every member's slurmctld (same or up to "
                  f"{slurm_versions.older_releases_accepted(dbd_version)} older major releases)")
    for peer in peers:
        assert peer.slurm
        if peer.slurm.cluster_name == new.slurm.cluster_name:
            problems.append(
                f"ClusterName {new.slurm.cluster_name} is already used by federation member {peer.cluster_name}"
            )
    passed.append(f"ClusterName {new.slurm.cluster_name} is unique in the federation")
    registered_host = accounting.slurm.control_hosts().get(new.slurm.cluster_name)
    if registered_host and registered_host != new.head_node.private_ip and new.stack_id != accounting.stack_id:
        problems.append(
            f"ClusterName {new.slurm.cluster_name} is already registered in the federation's accounting by a live "
            f"slurmctld at {registered_host}: give the new cluster another name, or stop that cluster first"
        )
    if len(new.slurm.cluster_name) > 40:
        problems.append(f"ClusterName {new.slurm.cluster_name} is longer than 40 characters (Slurm accounting limit)")
    expected = config.srun_port_range if config else ""
    if expected:  # the rules open exactly this range: srun on another range would have no path
        for member in members:
            assert member.slurm
            if member.slurm.srun_port_range != expected:
                problems.append(
                    f"{member.cluster_name} runs with SrunPortRange {member.slurm.srun_port_range or 'unset'}, the "
                    f"federation's SrunPortRange option is {expected}: set SrunPortRange={expected} in its slurm.conf "
                    "(ParallelCluster Scheduling/SlurmSettings/CustomSlurmSettings), then pcluster update-cluster")
        passed.append(f"every member runs with SrunPortRange {expected} (interactive srun/salloc -M)")
    if problems:
        raise PrerequisiteFailed("; ".join(problems))
    return passed


def plan(clients: ClientFactory, request: PairingRequest, members: list[Member], config: Settings) -> Plan:
    """Compute the exact changes; reads current rules and the secret's state but changes nothing."""
    new, accounting, peers = _split(request, members)
    assert new.slurm and accounting.slurm
    # The rule budget is checked here, before anything changes (PrerequisiteFailed names group, count and quota).
    network, rules = ingress.plan_network(lambda region: clients("ec2", region),
                                          lambda region: clients("service-quotas", region), members, config.deployment_id,
                                          config.srun_port_range, paired_stack_id=new.stack_id)
    secret_name = config.munge_key_secret_name(new.federation)
    # A same-named secret someone else made would be handed the key: refuse before anything changes.
    munge_secret.check_ours(clients("secretsmanager", accounting.region), secret_name, config)
    expected = accounting.slurm.munge_key_sha256
    head_differs = new.slurm.munge_key_sha256 != expected
    stale_shared = new.slurm.shared_keys_not(expected)
    install = head_differs or bool(stale_shared)
    # A head node already on the federation key may still have nodes on another one (the key copied to the head
    # only, by hand): ask each node which key it runs, rather than assume they follow the head.
    nodes = new.compute_instance_ids + new.login_instance_ids
    stale_nodes = nodes if head_differs else nodes_not_on(clients, new, expected, config)
    restarts = []
    if head_differs:
        restarts.append(f"{new.cluster_name} head node: munge")
    elif stale_shared:
        restarts.append(f"{new.cluster_name} head node: none (only its shared copies {', '.join(stale_shared)} change)")
    if stale_nodes:
        restarts.append(f"{new.cluster_name} compute and login nodes on another key ({len(stale_nodes)}): munge, slurmd")
    accounting_plan = None
    if not new.is_accounting:
        host, port = accounting.head_node.private_ip, accounting.slurm.dbd_port or 6819
        change = (
            new.slurm.accounting_storage_type != "accounting_storage/slurmdbd"
            or new.slurm.accounting_storage_host != host
            or new.slurm.accounting_storage_port != port
        )
        stop_dbd = config.stop_member_slurmdbd and new.slurm.slurmdbd_active
        accounting_plan = AccountingPlan(
            file=new.slurm.accounting_file,
            current_host=new.slurm.accounting_storage_host,
            current_port=new.slurm.accounting_storage_port,
            host=host,
            port=port,
            change=change,
            stop_local_slurmdbd=stop_dbd,
        )
        if stop_dbd:
            restarts.append(f"{new.cluster_name} head node: stop and disable its own slurmdbd")
    if head_differs:
        restarts.append(f"{new.cluster_name} head node: slurmctld stopped while its nodes switch keys, then started")
    if accounting_plan and accounting_plan.change:
        restarts.append(f"{new.cluster_name} head node: slurmctld (after the accounting change)")
    return Plan(
        federation=new.federation,
        cluster_name=new.cluster_name,
        stack_id=new.stack_id,
        slurm_cluster_name=new.slurm.cluster_name,
        accounting_cluster=accounting.cluster_name,
        accounting_stack_id=accounting.stack_id,
        peers=[p.cluster_name for p in peers],
        ingress_rules=rules,
        network=network,
        munge_key=KeyPlan(
            secret_name=secret_name,
            expected_sha256=expected,
            install_on_head=install,
            head_key_differs=head_differs,
            install_on_instances=stale_nodes,
            stale_shared_copies=stale_shared,
        ),
        accounting=accounting_plan,
        restarts=restarts,
        already_paired=not rules and not network.changes() and not install and not stale_nodes and not (accounting_plan and (accounting_plan.change or accounting_plan.stop_local_slurmdbd)),
    )


def nodes_not_on(clients: ClientFactory, member: Member, sha256: str, config: Settings) -> list[str]:
    """The member's compute and login nodes that do not run the key with this fingerprint, as each node itself
    reports it (discovery.node_keys); a node that cannot say counts as not on it, one shut down meanwhile does not."""
    nodes = member.compute_instance_ids + member.login_instance_ids
    if not nodes:
        return []
    stale = discovery.not_on_key(discovery.node_keys(clients("ssm", member.region), clients("ec2", member.region),
                                                     member.cluster_name, nodes), sha256)
    if stale:
        logger.info("nodes not on the federation key", extra={"cluster": member.cluster_name, "instances": stale})
    return stale


def authorize_ingress(clients: ClientFactory, the_plan: Plan, execution: str, config: Settings) -> dict[str, Any]:
    """Apply the planned network: federation groups and prefix lists, attachments, the missing rules (each again
    checked, so a re-run changes nothing)."""
    assert the_plan.network is not None
    return ingress.apply_network(lambda region: clients("ec2", region), the_plan.network, the_plan.ingress_rules,
                                 execution, config.deployment_id)


def _member(members: list[Member], stack_id: str) -> Member:
    return next(m for m in members if m.stack_id == stack_id)


def sync_munge_key(clients: ClientFactory, the_plan: Plan, members: list[Member], execution: str, config: Settings,
                   skipped: list[discovery.SkippedMember] | None = None) -> dict[str, Any]:
    """Make sure the federation secret holds the accounting cluster's key and the new member runs it (skipped
    members keep the read access they have)."""
    new = _member(members, the_plan.stack_id)
    accounting = _member(members, the_plan.accounting_stack_id)
    secrets = clients("secretsmanager", accounting.region)
    arn, has_value = munge_secret.ensure_secret(secrets, the_plan.munge_key.secret_name, the_plan.federation, config)
    # The new member reads the key to install it; RestoreSecretAccess takes that back if the pairing rolls back.
    munge_secret.set_access(secrets, arn, [*key_holders(members, accounting), new], config.break_glass_role_arn,
                            munge_secret.readers_to_keep(secrets, arn, skipped or []))
    outcome: dict[str, Any] = {"secretArn": arn, "uploaded": False, "installedOn": []}
    if not has_value:
        results = node_commands.run_script_checked(
            clients("ssm", accounting.region),
            [accounting.head_node.instance_id],
            "upload-munge-key.sh",
            {"SecretId": arn, "Region": accounting.region},
            timeout_seconds=120,
            comment=f"slurm-multicluster: store {accounting.cluster_name}'s munge key as the federation key",
        )
        uploaded = results[accounting.head_node.instance_id].result
        if uploaded.get("sha256") != the_plan.munge_key.expected_sha256:
            raise PrerequisiteFailed("the uploaded federation key does not match the accounting cluster's live key")
        outcome["uploaded"] = True
    ssm = clients("ssm", new.region)
    common = {"SecretId": arn, "Region": accounting.region, "ExpectSha256": the_plan.munge_key.expected_sha256,
              "BackupId": execution}
    if the_plan.munge_key.install_on_head:  # the head node's key, or only its shared copies
        # slurmctld is held down until the nodes run the key too (rotation.switch_member says why: a job ending
        # meanwhile would otherwise stay RUNNING), then started on it below
        node_commands.run_script_checked(
            ssm, [new.head_node.instance_id], "install-munge-key.sh",
            {**common, "SharedDirs": True, "Hold": "slurmctld"},
            timeout_seconds=config.node_command_timeout_seconds,
            comment=f"slurm-multicluster: install the federation munge key on {new.cluster_name} head node",
        )
        outcome["installedOn"].append(new.head_node.instance_id)
    # after the head node: the nodes copy the key from its shared copies; the node list is read again now (nodes
    # launched since the plan may have booted with the old shared key; nodes shut down since are no failure)
    ec2 = clients("ec2", new.region)
    known = set(new.compute_instance_ids + new.login_instance_ids)
    running = discovery.fleet(clients, new)
    nodes = sorted(i for i in running if i in the_plan.munge_key.install_on_instances or i not in known)
    if nodes:
        results = node_commands.run_on_fleet(
            ssm, ec2, nodes, "install-munge-key.sh",
            {"FromSharedDir": True, "ExpectSha256": the_plan.munge_key.expected_sha256, "BackupId": execution,
             "Restart": "slurmd"},
            timeout_seconds=config.node_command_timeout_seconds,
            comment=f"slurm-multicluster: install the federation munge key on {new.cluster_name} compute nodes",
        )
        outcome["installedOn"] += [i for i, r in results.items() if not r.gone]
    if the_plan.munge_key.install_on_head:
        node_commands.run_script_checked(
            ssm, [new.head_node.instance_id], "install-munge-key.sh", {**common, "StartHeld": True},
            timeout_seconds=config.node_command_timeout_seconds,
            comment=f"slurm-multicluster: start {new.cluster_name} slurmctld again on the federation munge key",
        )
    return outcome


def point_accounting(clients: ClientFactory, the_plan: Plan, members: list[Member], execution: str, config: Settings) -> dict[str, Any]:
    """Point the new member's slurmctld at the federation's slurmdbd."""
    if the_plan.accounting is None:
        return {"changed": False, "reason": "the cluster is the accounting cluster"}
    new = _member(members, the_plan.stack_id)
    parameters = {"Host": v.ipv4(the_plan.accounting.host), "Port": str(the_plan.accounting.port),
                  "BackupId": execution, "StopLocalSlurmdbd": the_plan.accounting.stop_local_slurmdbd}
    results = node_commands.run_script_checked(
        clients("ssm", new.region), [new.head_node.instance_id], "set-accounting.sh", parameters,
        timeout_seconds=config.node_command_timeout_seconds,
        comment=f"slurm-multicluster: point {new.cluster_name} at the federation slurmdbd",
    )
    return results[new.head_node.instance_id].result


def verify(clients: ClientFactory, the_plan: Plan, members: list[Member], config: Settings) -> dict[str, Any]:
    """Prove the pairing works: accounting lists both, submissions work both ways, munge keys agree, nodes up.

    Users submit from login nodes and from jobs on compute nodes, not from head nodes: the checks run on each
    cluster's head node, on one of its login nodes and on one of its compute nodes (where it has them running),
    all commands in flight together, then munge credentials go round the head nodes.
    """
    new = _member(members, the_plan.stack_id)
    accounting = _member(members, the_plan.accounting_stack_id)
    assert new.slurm
    deadline = config.verify_deadline_seconds
    peers = {new.cluster_name: verification_peers(new, accounting, members)}
    if accounting.stack_id != new.stack_id:
        peers[accounting.cluster_name] = [new.slurm.cluster_name]
    checks: dict[str, Any] = {}
    in_flight = {
        f"{name} {where}": node_commands.send_script(
            clients("ssm", member.region), [instance_id], "verify-member.sh",
            {"Peers": ",".join(peers[name]), "Deadline": str(deadline)},
            timeout_seconds=deadline + 60,
            comment=f"slurm-multicluster: verify {name} reaches {', '.join(peers[name])} from its {where}",
        )
        for name, member in ((new.cluster_name, new), (accounting.cluster_name, accounting))
        if peers.get(name)
        for where, instance_id in submit_hosts(member).items()
    }
    for name, sent in in_flight.items():
        result = node_commands.collect(sent)[sent.instance_ids[0]]
        if not result.ok:
            raise VerificationFailed(f"on {name}: {result.result.get('error') or result.status}")
        checks[name] = result.result
    if accounting.stack_id != new.stack_id:
        checks["munge"] = _munge_round_trips(clients, [new, accounting])
    return checks


def submit_hosts(member: Member) -> dict[str, str]:
    """Where the member's users submit from, one of each kind it has running: its head node, a login node and a
    compute node (a job submitting to a peer). Each must reach slurmdbd and the peers' slurmctld ports."""
    hosts = {"head node": member.head_node.instance_id}
    if member.login_instance_ids:
        hosts["login node"] = member.login_instance_ids[0]
    if member.compute_instance_ids:
        hosts["compute node"] = member.compute_instance_ids[0]
    return hosts


def verification_peers(new: Member, accounting: Member, members: list[Member]) -> list[str]:
    """The ClusterNames the new member must reach: the accounting cluster and every member already paired
    (registered in accounting with a live slurmctld). A member created at the same moment and still waiting
    for its own pairing is not a reason to fail this one."""
    assert accounting.slurm
    live = {name for name, host in accounting.slurm.control_hosts().items() if host}
    return [
        m.slurm.cluster_name
        for m in members
        if m.stack_id != new.stack_id and m.slurm and (m.stack_id == accounting.stack_id or m.slurm.cluster_name in live)
    ]


def _on_heads(clients: ClientFactory, heads: list[Member], script: str, args_for: Callable[[Member], node_commands.Parameters],
              what: str) -> dict[str, node_commands.NodeResult]:
    """Run a script on several head nodes at once; results by cluster name."""
    sent = {
        m.cluster_name: node_commands.send_script(
            clients("ssm", m.region), [m.head_node.instance_id], script, args_for(m),
            timeout_seconds=60, comment=f"slurm-multicluster: {what} on {m.cluster_name}")
        for m in heads
    }
    return {name: node_commands.collect(command)[command.instance_ids[0]] for name, command in sent.items()}


def _munge_round_trips(clients: ClientFactory, heads: list[Member]) -> dict[str, bool]:
    """A credential made on each head node must decode on the next one (and the last on the first)."""
    encoded = _on_heads(clients, heads, "munge-credential.sh", lambda m: {"Mode": "encode"}, "munge credential")
    node_commands.raise_failures("munge-credential.sh encode", {r.instance_id: r for r in encoded.values()})
    source_of = {target.cluster_name: heads[i - 1] for i, target in enumerate(heads)}
    credentials = {name: v.require(v.MUNGE_CREDENTIAL, encoded[source_of[name].cluster_name].result.get("credential"),
                                   "munge credential") for name in source_of}
    decoded = _on_heads(clients, heads, "munge-credential.sh",
                        lambda m: {"Mode": "decode", "Credential": credentials[m.cluster_name]}, "decode a peer's credential")
    outcome = {}
    for target, result in decoded.items():
        source = source_of[target].cluster_name
        if not result.result.get("decoded"):
            raise VerificationFailed(
                f"a munge credential from {source} does not decode on {target}: "
                f"{result.result.get('status') or result.result.get('error')} (the munge keys differ)"
            )
        outcome[f"{source}->{target}"] = True
    return outcome


def restore_backups(clients: ClientFactory, request: PairingRequest, members: list[Member], the_plan: Plan | None,
                    config: Settings) -> dict[str, Any]:
    """Compensation: restore every file this execution backed up on the new member's nodes, restart daemons,
    slurmctld held down while the nodes switch back (node_rollback.restore_member says why)."""
    new = _requested(request, members)
    # a node launched during the pairing booted from the shared dir SyncMungeKey wrote: it takes the head node's
    # previous key from there again (when the pairing changed the head node's key)
    previous = new.slurm.munge_key_sha256 if new.slurm and the_plan and the_plan.munge_key.install_on_head else None
    nodes, failures = node_rollback.restore_member(clients, new, request.execution_name, config,
                                                   previous_sha256=previous, restart_failed=False)
    if failures:
        raise node_commands.NodeCommandFailed(f"restore-backup.sh failed on {new.cluster_name}: {'; '.join(failures)}")
    return nodes


def key_holders(members: list[Member], accounting: Member) -> list[Member]:
    """The members that run the federation's key (the accounting cluster's), as ReadSlurmSettings found them
    before this execution changed anything: exactly the head node roles the secret lets read it."""
    assert accounting.slurm
    return [m for m in members if m.stack_id == accounting.stack_id
            or (m.slurm and m.slurm.munge_key_sha256 == accounting.slurm.munge_key_sha256)]


def restore_secret_access(clients: ClientFactory, request: PairingRequest, members: list[Member],
                          config: Settings, skipped: list[discovery.SkippedMember] | None = None) -> dict[str, Any]:
    """Compensation: the secret's readers go back to the members that ran the federation key before this execution
    (a new member that did not loses the read access SyncMungeKey gave it), and the skipped members keep what they
    have. A missing or foreign secret is left alone."""
    accounting = [m for m in members if m.is_accounting]
    if len(accounting) != 1 or accounting[0].slurm is None:
        return {"changed": False, "reason": "no single accounting cluster: SyncMungeKey cannot have run"}
    secrets = clients("secretsmanager", accounting[0].region)
    name = config.munge_key_secret_name(accounting[0].federation)
    try:
        described = munge_secret.check_ours(secrets, name, config)
    except PrerequisiteFailed as refused:
        return {"changed": False, "reason": str(refused)}
    if described is None:
        return {"changed": False, "reason": f"no secret {name}"}
    readers = munge_secret.set_access(secrets, described["ARN"], key_holders(members, accounting[0]),
                                      config.break_glass_role_arn,
                                      munge_secret.readers_to_keep(secrets, described["ARN"], skipped or []))
    return {"changed": True, "secret": described["ARN"], "readers": readers}


def revoke_added_ingress(clients: ClientFactory, request: PairingRequest, members: list[Member], the_plan: Plan | None,
                         config: Settings) -> dict[str, Any]:
    """Compensation: revoke every rule this execution created (found by its execution tag), and undo the rest of
    its planned network (attachments, prefix-list entries, the groups and lists it created)."""
    regions = sorted({m.region for m in members})
    ec2_for = lambda region: clients("ec2", region)  # noqa: E731
    if the_plan is None or the_plan.network is None:
        revoked = ingress.revoke(ec2_for, ingress.rules_added_by(ec2_for, regions, request.execution_name))
        return {"revoked": [rule.state() for rule in revoked]}
    return ingress.undo_network(ec2_for, the_plan.network, request.execution_name, config.deployment_id)
