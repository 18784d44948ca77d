"""Least-privilege ingress for federations of up to 50 members: a constant number of rules per security group.

Design (docs/design.md, "Network"): every VPC holding a member has one *federation security group* that the
product creates and owns. It has no rules of its own: it is the badge of the federation's hosts in that VPC
(head nodes get it attached to their primary ENI at pairing; login pools and queues carry it through
ParallelCluster's AdditionalSecurityGroups, config_snippet.py). Every VPC also gets one *federation prefix list*
of the subnets where the members of the *other* VPCs run (security-group references do not cross regions, nor
VPCs without peering). Each member's head node group then holds, whatever the federation's size:

  SlurmctldPort range (and DbdPort on the accounting head, merged into one range when adjacent)
    from the federation group of its VPC, and from the prefix list of its VPC (counted as its MaxEntries),
    plus, for an existing cluster whose login/compute nodes do not carry the group yet, its node group (fallback).

With SrunPortRange on (interactive srun/salloc -M, off by default), the federation group of each VPC also holds
SlurmdPort and SrunPortRange, each from itself and from its VPC's prefix list: 4 rules per federation group
whatever the federation's size. Hosts without the federation group (the fallbacks) get no srun path.

No rule of ours references a member's own group except those fallbacks, which the unpairing revokes first, so a
member's stack deletion is never blocked. Ports come from the members' live Slurm settings.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from slurm_multicluster import validation as v
from slurm_multicluster.errors import PrerequisiteFailed
from slurm_multicluster.models import AddedRule, IngressRule, Member, StateModel

logger = Logger(child=True)

Ec2For = Callable[[str], Any]  # region -> EC2 client

OWNER_TAG = "slurm-multicluster:federation"
DEPLOYMENT_TAG = "slurm-multicluster:deployment"  # another deployment's rules are never read, revoked or counted
EXECUTION_TAG = "slurm-multicluster:execution"
SOURCE_CLUSTER_TAG = "slurm-multicluster:source-cluster"  # names, for people reading the console
TARGET_CLUSTER_TAG = "slurm-multicluster:target-cluster"
SOURCE_STACK_TAG = "slurm-multicluster:source-stack"  # StackIds: the identity the unpairing and the sweep use
TARGET_STACK_TAG = "slurm-multicluster:target-stack"

# Service Quotas (VPC): read live, AWS's defaults when Service Quotas cannot answer.
RULES_QUOTA = ("L-0EA8095F", "Inbound or outbound rules per security group", 60)
GROUPS_PER_ENI_QUOTA = ("L-2AFB9258", "Security groups per network interface", 5)
RULES_TIMES_GROUPS_CEILING = 1000  # AWS: rules per group x groups per network interface <= 1,000


def resource_name(deployment: str, federation: str) -> str:
    """The name of the federation's security group (in each VPC) and prefix list (in each region)."""
    return f"slurm-multicluster-{deployment}-{federation}"


class FederationVpc(StateModel):
    """The federation's network objects in one VPC: now, and what the plan adds."""

    region: str
    vpc_id: str
    group_id: str | None = None  # None until AuthorizeIngress creates it
    prefix_list_id: str | None = None
    prefix_list_version: int | None = None
    entries: list[str] = []  # the prefix list's CIDRs now
    add_entries: list[str] = []  # subnets of other VPCs' members it lacks
    entry_sources: dict[str, str] = {}  # each of add_entries -> the member (cluster name) whose subnet it is
    create_group: bool = False
    create_prefix_list: bool = False

    @property
    def max_entries_after(self) -> int:
        """The prefix list's size once the plan is applied (each rule referencing it counts this much)."""
        return len(self.entries) + len(self.add_entries)


class Attachment(StateModel):
    """The federation group attached to a head node's primary ENI (ModifyNetworkInterfaceAttribute)."""

    region: str
    vpc_id: str
    network_interface_id: str
    cluster: str
    stack_id: str
    groups_before: list[str]


class GroupBudget(StateModel):
    """One head node group's rule count against its quota, before and after the plan."""

    region: str
    group_id: str
    cluster: str
    rules_now: int
    rules_after: int
    quota: int


class NetworkPlan(StateModel):
    """Everything AuthorizeIngress changes besides the rules: groups, attachments, prefix-list entries."""

    federation: str
    vpcs: list[FederationVpc] = []
    attach: list[Attachment] = []
    budget: list[GroupBudget] = []
    srun_port_range: str = ""  # the option as this plan applied it ("" = off)
    notes: list[str] = []  # what the plan does not open and why (not failures)
    revoke: list[AddedRule] = []  # our rules on federation groups the option no longer wants (turned off, changed)

    def changes(self) -> bool:
        return bool(self.attach or self.revoke or any(vpc.create_group or vpc.add_entries for vpc in self.vpcs))

    def vpc(self, vpc_id: str) -> FederationVpc:
        return next(x for x in self.vpcs if x.vpc_id == vpc_id)


# ---------------------------------------------------------------- quotas


def quota(quotas: Any, code: tuple[str, str, int]) -> int:
    """The account's value of a VPC quota (Service Quotas), or AWS's default when it cannot be read."""
    try:
        return int(quotas.get_service_quota(ServiceCode="vpc", QuotaCode=code[0])["Quota"]["Value"])
    except (ClientError, KeyError) as error:
        logger.warning("quota not readable, using AWS's default", extra={"quota": code[1], "error": str(error)})
        return code[2]


def _raise_advice(code: tuple[str, str, int], value: int) -> str:
    return (f"the quota '{code[1]}' ({code[0]}) is {value}: raise it in Service Quotas (VPC), keeping rules per "
            f"group x groups per network interface <= {RULES_TIMES_GROUPS_CEILING}")


# ---------------------------------------------------------------- reading the federation's network


def rules_on_group(ec2: Any, group_id: str) -> list[dict[str, Any]]:
    paginator = ec2.get_paginator("describe_security_group_rules")
    return [
        rule
        for page in paginator.paginate(Filters=[{"Name": "group-id", "Values": [group_id]}])
        for rule in page["SecurityGroupRules"]
    ]


def _owned(tags: list[dict[str, str]], federation: str, deployment: str) -> bool:
    found = {t["Key"]: t["Value"] for t in tags}
    return found.get(OWNER_TAG) == federation and found.get(DEPLOYMENT_TAG) == deployment


def federation_group(ec2: Any, vpc_id: str, federation: str, deployment: str) -> str | None:
    """The federation group of ``vpc_id``; PrerequisiteFailed for a same-named group this deployment did not create
    (its hosts would be trusted as federation hosts)."""
    name = resource_name(deployment, federation)
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                   {"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    for group in groups:
        if not _owned(group.get("Tags", []), federation, deployment):
            raise PrerequisiteFailed(f"security group {group['GroupId']} in {vpc_id} is named {name} but was not "
                                     f"created by slurm-multicluster deployment {deployment} for federation "
                                     f"{federation} (its tags): delete or rename it")
        return v.require(v.SECURITY_GROUP_ID, group["GroupId"], "security group id")
    return None


def federation_prefix_lists(ec2: Any, federation: str, deployment: str) -> list[dict[str, Any]]:
    """This deployment's prefix lists of ``federation`` in the client's region (one per VPC, tagged with it)."""
    paginator = ec2.get_paginator("describe_managed_prefix_lists")
    found = []
    for page in paginator.paginate(Filters=[{"Name": "prefix-list-name", "Values": [resource_name(deployment, federation)]}]):
        found += [pl for pl in page["PrefixLists"] if _owned(pl.get("Tags", []), federation, deployment)
                  and not pl["State"].startswith("delete")]
    return found


def _vpc_tag(prefix_list: dict[str, Any]) -> str | None:
    return {t["Key"]: t["Value"] for t in prefix_list.get("Tags", [])}.get(VPC_TAG)


VPC_TAG = "slurm-multicluster:vpc"  # which VPC's heads a prefix list opens to (one list per VPC)


def prefix_list_entries(ec2: Any, prefix_list_id: str) -> list[str]:
    paginator = ec2.get_paginator("get_managed_prefix_list_entries")
    return sorted(e["Cidr"] for page in paginator.paginate(PrefixListId=prefix_list_id) for e in page["Entries"])


def read_vpc(ec2: Any, region: str, vpc_id: str, federation: str, deployment: str) -> FederationVpc:
    """The federation's group and prefix list of one VPC as they are now."""
    vpc = FederationVpc(region=region, vpc_id=vpc_id, group_id=federation_group(ec2, vpc_id, federation, deployment))
    for prefix_list in federation_prefix_lists(ec2, federation, deployment):
        if _vpc_tag(prefix_list) == vpc_id:
            vpc.prefix_list_id = prefix_list["PrefixListId"]
            vpc.prefix_list_version = prefix_list.get("Version")
            vpc.entries = prefix_list_entries(ec2, prefix_list["PrefixListId"])
    return vpc


def member_cidrs(member: Member, queue_cidrs: list[str] | None = None) -> list[str]:
    """Where a member's submissions come from, as CIDRs: its head node's subnet, its nodes' subnets and its queues'
    subnets (``queue_cidrs``, from queue_subnet_cidrs: a compute node may launch in any of them)."""
    return sorted({*([member.head_node.subnet_cidr] if member.head_node.subnet_cidr else []), *member.node_subnet_cidrs,
                   *(queue_cidrs or [])})


def queue_subnet_cidrs(ec2_for: Ec2For, members: list[Member]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(StackId -> the CIDRs of the queue subnets its head node reports, StackId -> why they were refused).

    discover-slurm.sh reads them from ParallelCluster's fleet-config.json (SlurmSettings.queue_subnet_ids): a queue
    with several subnets launches compute nodes in subnets its launch template does not name. They are resolved with
    DescribeSubnets in the member's region, and ParallelCluster keeps every subnet of a cluster in its head node's
    VPC: a subnet that does not exist or lies in another VPC refuses all of that member's, so root on one head node
    cannot put another network into the federation's prefix lists."""
    cidrs: dict[str, list[str]] = {}
    refused: dict[str, str] = {}
    for member in members:
        ids = sorted(set(member.slurm.queue_subnet_ids)) if member.slurm else []
        if not ids:
            continue
        paginator = ec2_for(member.region).get_paginator("describe_subnets")
        found = {subnet["SubnetId"]: subnet for page in paginator.paginate(Filters=[{"Name": "subnet-id", "Values": ids}])
                 for subnet in page["Subnets"]}
        problems = [f"{i} does not exist in {member.region}" for i in ids if i not in found] + [
            f"{i} is in {found[i]['VpcId']}" for i in ids if i in found and found[i]["VpcId"] != member.head_node.vpc_id]
        if problems:
            refused[member.stack_id] = (
                f"{member.cluster_name}: its head node reports queue subnets (fleet-config.json) outside its VPC "
                f"{member.head_node.vpc_id}: {', '.join(problems)}; ParallelCluster keeps a cluster's subnets in its "
                "head node's VPC, so none of them is opened to the federation")
            continue
        cidrs[member.stack_id] = sorted({v.ipv4_cidr(found[i]["CidrBlock"]) for i in ids})
    return cidrs, refused


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent port ranges as one (6819 + 6820-6829 = 6819-6829: one rule, the same ports)."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _ports(target: Member) -> list[tuple[tuple[int, int], str]]:
    """The target head node's listening ports the federation needs: its SlurmctldPort range, and DbdPort when it
    is the accounting head; (range, purpose)."""
    assert target.slurm, "Slurm settings must be discovered before planning rules"
    ranges = {v.port_range(target.slurm.slurmctld_port): "slurmctld"}
    if target.is_accounting and target.slurm.dbd_port:
        ranges[(target.slurm.dbd_port, target.slurm.dbd_port)] = "slurmdbd"
    out = []
    for merged in _merge(list(ranges)):
        purposes = [p for r, p in sorted(ranges.items()) if merged[0] <= r[0] and r[1] <= merged[1]]  # by port
        out.append((merged, "+".join(purposes)))
    return out


def fallback_groups(members: list[Member], vpc: FederationVpc) -> list[tuple[Member, str]]:
    """(member, group) for every same-VPC member whose login or compute nodes run without the federation group:
    their own group stands in as a source until the cluster carries ours (config snippet, pcluster update)."""
    found: list[tuple[Member, str]] = []
    for member in members:
        if member.head_node.vpc_id != vpc.vpc_id:
            continue
        for groups in member.node_security_group_sets:
            if vpc.group_id and vpc.group_id in groups:
                continue
            if not any(g == groups[0] for _, g in found):
                found.append((member, groups[0]))
    return found


def _federation_sources(vpc: FederationVpc) -> list[dict[str, Any]]:
    """The federation-wide sources of a VPC: its federation group, and its prefix list once it has entries."""
    sources: list[dict[str, Any]] = [{"source_kind": "federation-group", "source_group_id": vpc.group_id,
                                      "source_cluster": f"federation hosts in {vpc.vpc_id}"}]
    if vpc.max_entries_after:
        sources.append({"source_kind": "prefix-list", "source_prefix_list_id": vpc.prefix_list_id,
                        "source_cluster": f"members outside {vpc.vpc_id}"})
    return sources


def srun_rules(members: list[Member], vpcs: list[FederationVpc], srun_port_range: str) -> list[IngressRule]:
    """With SrunPortRange on: on each VPC's federation group, the SlurmdPort of its members (srun -> a peer's
    slurmd) and SrunPortRange (a peer's slurmstepd -> srun), each from the federation group and the prefix list."""
    if not srun_port_range:
        return []
    srun = v.port_range(srun_port_range, "SrunPortRange")
    rules: list[IngressRule] = []
    for vpc in vpcs:
        here = [m for m in members if m.head_node.vpc_id == vpc.vpc_id]
        assert all(m.slurm for m in here), "Slurm settings must be discovered before planning rules"
        slurmd = _merge([(m.slurm.slurmd_port, m.slurm.slurmd_port) for m in here if m.slurm])  # 6818: one range
        ports = [(r, "slurmd") for r in slurmd] + [(srun, "srun")]
        target = f"federation hosts in {vpc.vpc_id}"
        for (low, high), purpose in ports:
            for source in _federation_sources(vpc):
                rule = IngressRule(
                    region=vpc.region, group_id=vpc.group_id or "", target_kind="federation-group",
                    vpc_id=vpc.vpc_id, from_port=low, to_port=high, target_cluster=target, target_stack="",
                    purpose=purpose,
                    description=f"slurm-multicluster {members[0].federation}: {source['source_cluster']} to "
                                f"{target} {purpose}",
                    **source,
                )
                if not any(rule.same_permission(kept) for kept in rules):
                    rules.append(rule)
    return rules


def srun_notes(members: list[Member], vpcs: list[FederationVpc], srun_port_range: str) -> list[str]:
    """What SrunPortRange does not open: the nodes that do not carry their VPC's federation group (fallbacks)."""
    if not srun_port_range:
        return []
    notes = []
    for vpc in vpcs:
        for member, group in fallback_groups(members, vpc):
            notes.append(f"interactive srun/salloc -M has no path to or from {member.cluster_name}'s login and "
                         f"compute nodes of security group {group}: they do not carry the federation security group "
                         f"(sbatch -M works); add it to their AdditionalSecurityGroups (config snippet), then "
                         "pcluster update-cluster")
    return notes


def plan_rules(members: list[Member], vpcs: list[FederationVpc], srun_port_range: str = "") -> list[IngressRule]:
    """Every rule each member's head node group needs (O(1) per group, fallbacks aside), and with SrunPortRange
    on the federation groups' 4 (srun_rules), without duplicates."""
    by_vpc = {x.vpc_id: x for x in vpcs}
    rules: list[IngressRule] = []
    for target in members:
        vpc = by_vpc[target.head_node.vpc_id]
        sources = _federation_sources(vpc)
        for member, group in fallback_groups(members, vpc):
            if member.stack_id == target.stack_id:
                continue  # its own nodes reach its head node through ParallelCluster's rules
            sources.append({"source_kind": "group", "source_group_id": group, "source_stack": member.stack_id,
                            "source_cluster": f"{member.cluster_name} nodes"})
        for (low, high), purpose in _ports(target):
            for source in sources:
                rule = IngressRule(
                    region=target.region, group_id=target.head_node.security_group_ids[0], vpc_id=vpc.vpc_id,
                    from_port=low, to_port=high, target_cluster=target.cluster_name, target_stack=target.stack_id,
                    purpose=purpose,
                    # Descriptions allow a small character set (no '>'): "to" reads fine.
                    description=f"slurm-multicluster {target.federation}: {source['source_cluster']} to "
                                f"{target.cluster_name} {purpose}",
                    **source,
                )
                if not any(rule.same_permission(kept) for kept in rules):
                    rules.append(rule)
    return rules + srun_rules(members, vpcs, srun_port_range)


def _grants(current: dict[str, Any], rule: IngressRule) -> bool:
    """Does an existing inbound rule (ours or an admin's) already grant ``rule``'s ports from its source?"""
    if current.get("IsEgress") or current.get("IpProtocol") not in ("tcp", "-1"):
        return False
    if current["IpProtocol"] == "tcp" and not (current["FromPort"] <= rule.from_port and rule.to_port <= current["ToPort"]):
        return False
    if rule.source_kind == "prefix-list":
        return bool(rule.source_prefix_list_id) and current.get("PrefixListId") == rule.source_prefix_list_id
    source_group = current.get("ReferencedGroupInfo", {}).get("GroupId")
    return bool(rule.source_group_id) and source_group == rule.source_group_id


def missing_rules(ec2_for: Ec2For, rules: list[IngressRule],
                  cache: dict[str, list[dict[str, Any]]] | None = None) -> list[IngressRule]:
    """The planned rules that no existing rule (ours or the admin's) already grants."""
    cache = {} if cache is None else cache
    missing = []
    for rule in rules:
        if not rule.group_id:  # a federation group still to be created holds nothing yet
            missing.append(rule)
            continue
        if rule.group_id not in cache:
            cache[rule.group_id] = rules_on_group(ec2_for(rule.region), rule.group_id)
        if not any(_grants(current, rule) for current in cache[rule.group_id]):
            missing.append(rule)
    return missing


def _prefix_list_sizes(ec2: Any, ids: set[str]) -> dict[str, int]:
    if not ids:
        return {}
    described = ec2.describe_managed_prefix_lists(PrefixListIds=sorted(ids))["PrefixLists"]
    return {pl["PrefixListId"]: int(pl.get("MaxEntries") or 1) for pl in described}


def rule_weight(ec2: Any, rules: list[dict[str, Any]], sizes: dict[str, int] | None = None) -> int:
    """Inbound rules of a group as the quota counts them: a prefix-list reference counts as its MaxEntries."""
    inbound = [r for r in rules if not r.get("IsEgress")]
    referenced = {r["PrefixListId"] for r in inbound if r.get("PrefixListId")}
    known = dict(sizes or {})
    known.update(_prefix_list_sizes(ec2, referenced - set(known)))
    return sum(known.get(r["PrefixListId"], 1) if r.get("PrefixListId") else 1 for r in inbound)


def _same_rule(current: dict[str, Any], rule: IngressRule) -> bool:
    """Is an existing rule exactly ``rule`` (same ports, same source)? A wider one is not what the option asks."""
    return (current.get("FromPort"), current.get("ToPort")) == (rule.from_port, rule.to_port) and _grants(current, rule)


def unwanted_federation_rules(ec2_for: Ec2For, network: NetworkPlan, rules: list[IngressRule], deployment: str,
                              cache: dict[str, list[dict[str, Any]]]) -> list[AddedRule]:
    """Our rules on the federation groups that the plan's SrunPortRange rules do not ask for: all of them once the
    option is off, the old ports once it changed. ``cache`` then holds each group's rules without them, so a rule
    about to be revoked never counts as granting a planned one."""
    unwanted = []
    for vpc in network.vpcs:
        if not vpc.group_id:
            continue
        ec2 = ec2_for(vpc.region)
        wanted = [r.model_copy(update={"source_group_id": vpc.group_id, "source_prefix_list_id": vpc.prefix_list_id})
                  for r in rules if r.target_kind == "federation-group" and r.vpc_id == vpc.vpc_id]
        kept = []
        for current in rules_on_group(ec2, vpc.group_id):
            ours = _owned(current.get("Tags", []), network.federation, deployment)
            if ours and not current.get("IsEgress") and not any(_same_rule(current, r) for r in wanted):
                unwanted.append(AddedRule(region=vpc.region, group_id=vpc.group_id,
                                          rule_id=current["SecurityGroupRuleId"]))
            else:
                kept.append(current)
        cache[vpc.group_id] = kept
    return unwanted


def plan_network(ec2_for: Ec2For, quotas_for: Callable[[str], Any], members: list[Member], deployment: str,
                 srun_port_range: str = "", paired_stack_id: str | None = None) -> tuple[NetworkPlan, list[IngressRule]]:
    """What the federation's network needs after this pairing, and the rules still missing; reads only.
    ``srun_port_range`` is the federation's SrunPortRange option ("" = off: our rules on the federation groups,
    if any are left from when it was on, are planned for revocation).

    Refuses (PrerequisiteFailed) before anything changes when a head node group would exceed its rules quota or an
    ENI its security-groups quota, saying which group, how many rules, which quota and how to raise it."""
    federation = members[0].federation
    queue, refused = queue_subnet_cidrs(ec2_for, members)
    # the cluster being paired is refused; a peer's refused subnets never halt the pairing of another cluster (it
    # keeps the subnets AWS shows; its own pairing, or the sweep's, fails on them loudly)
    if refused and (paired_stack_id is None or paired_stack_id in refused):
        raise PrerequisiteFailed("refused before anything changed: " + "; ".join(
            refused.values() if paired_stack_id is None else [refused[paired_stack_id]]))
    if refused:
        logger.warning("queue subnets of peers refused", extra={"refused": list(refused.values())})
    vpcs = {}
    for member in members:
        key = member.head_node.vpc_id
        if key not in vpcs:
            vpcs[key] = read_vpc(ec2_for(member.region), member.region, key, federation, deployment)
    for vpc in vpcs.values():
        vpc.create_group = vpc.group_id is None
        sources: dict[str, str] = {}
        for m in members:
            if m.head_node.vpc_id != vpc.vpc_id:
                for cidr in member_cidrs(m, queue.get(m.stack_id)):
                    sources.setdefault(cidr, m.cluster_name)
        vpc.add_entries = [cidr for cidr in sorted(sources) if cidr not in vpc.entries]
        vpc.entry_sources = {cidr: sources[cidr] for cidr in vpc.add_entries}
        vpc.create_prefix_list = bool(vpc.add_entries) and vpc.prefix_list_id is None
    network = NetworkPlan(federation=federation, vpcs=list(vpcs.values()),
                          srun_port_range=v.srun_port_range(srun_port_range))
    problems = []
    per_eni: dict[str, int] = {}
    for member in members:
        head, vpc = member.head_node, vpcs[member.head_node.vpc_id]
        if head.network_interface_id is None:
            problems.append(f"{member.cluster_name}: its head node has no primary network interface to attach the "
                            "federation security group to")
            continue
        on_eni = _group_ids_of_eni(ec2_for(member.region), head.network_interface_id)
        if vpc.group_id and vpc.group_id in on_eni:
            continue
        region_quota = per_eni.setdefault(member.region, quota(quotas_for(member.region), GROUPS_PER_ENI_QUOTA))
        if len(on_eni) + 1 > region_quota:
            problems.append(
                f"{member.cluster_name}: its head node's network interface {head.network_interface_id} already has "
                f"{len(on_eni)} security groups ({', '.join(on_eni)}), one more would exceed "
                f"{_raise_advice(GROUPS_PER_ENI_QUOTA, region_quota)}, or remove one of its "
                "HeadNode/Networking/AdditionalSecurityGroups")
            continue
        network.attach.append(Attachment(region=member.region, vpc_id=vpc.vpc_id, network_interface_id=head.network_interface_id,
                                         cluster=member.cluster_name, stack_id=member.stack_id, groups_before=on_eni))
    rules = plan_rules(members, network.vpcs, network.srun_port_range)
    network.notes = srun_notes(members, network.vpcs, network.srun_port_range)
    cache: dict[str, list[dict[str, Any]]] = {}
    network.revoke = unwanted_federation_rules(ec2_for, network, rules, deployment, cache)
    missing = missing_rules(ec2_for, rules, cache)
    per_group: dict[str, int] = {}
    for member in members:
        group, ec2 = member.head_node.security_group_ids[0], ec2_for(member.region)
        vpc = vpcs[member.head_node.vpc_id]
        ours = {vpc.prefix_list_id: vpc.max_entries_after} if vpc.prefix_list_id else {}
        now = rule_weight(ec2, cache.get(group) or rules_on_group(ec2, group))
        after = rule_weight(ec2, cache.get(group) or [], ours) + sum(
            vpc.max_entries_after if r.source_kind == "prefix-list" else 1 for r in missing if r.group_id == group)
        limit = per_group.setdefault(member.region, quota(quotas_for(member.region), RULES_QUOTA))
        network.budget.append(GroupBudget(region=member.region, group_id=group, cluster=member.cluster_name,
                                          rules_now=now, rules_after=after, quota=limit))
        if after > limit:
            problems.append(
                f"{member.cluster_name}: its head node security group {group} would hold {after} inbound rules "
                f"(now {now}; a prefix list counts as its max entries), more than {_raise_advice(RULES_QUOTA, limit)}; "
                "or let its login and compute nodes carry the federation security group (config snippet) so they need "
                "no rule of their own")
    for vpc in network.vpcs:  # SrunPortRange's rules sit on the federation groups: counted the same way
        planned = [r for r in missing if r.target_kind == "federation-group" and r.vpc_id == vpc.vpc_id]
        if not (planned or vpc.group_id and cache.get(vpc.group_id)):
            continue
        ec2, ours = ec2_for(vpc.region), {vpc.prefix_list_id: vpc.max_entries_after} if vpc.prefix_list_id else {}
        kept = cache.get(vpc.group_id, []) if vpc.group_id else []  # without the rules planned for revocation
        now = rule_weight(ec2, rules_on_group(ec2, vpc.group_id)) if vpc.group_id else 0
        after = rule_weight(ec2, kept, ours) + sum(
            vpc.max_entries_after if r.source_kind == "prefix-list" else 1 for r in planned)
        limit = per_group.setdefault(vpc.region, quota(quotas_for(vpc.region), RULES_QUOTA))
        where = f"federation hosts in {vpc.vpc_id}"
        network.budget.append(GroupBudget(region=vpc.region, group_id=vpc.group_id or "", cluster=where,
                                          rules_now=now, rules_after=after, quota=limit))
        if after > limit:
            problems.append(
                f"{where}: the federation security group {vpc.group_id or '(to be created)'} would hold {after} "
                f"inbound rules for SrunPortRange (now {now}; a prefix list counts as its max entries), more than "
                f"{_raise_advice(RULES_QUOTA, limit)}; or share VPCs/subnets so the prefix list is shorter")
    if problems:
        raise PrerequisiteFailed("the federation's network would not fit its quotas, nothing was changed: "
                                 + "; ".join(problems))
    return network, missing


# ---------------------------------------------------------------- changing it


def _tags(federation: str, deployment: str, execution: str, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    tags = {OWNER_TAG: federation, DEPLOYMENT_TAG: deployment, EXECUTION_TAG: execution, **(extra or {})}
    return [{"Key": k, "Value": value} for k, value in tags.items() if value]


def _wait_modified(ec2: Any, prefix_list_id: str) -> dict[str, Any]:
    """The prefix list once no modification is in progress (AWS applies them asynchronously)."""
    for _ in range(60):
        described = ec2.describe_managed_prefix_lists(PrefixListIds=[prefix_list_id])["PrefixLists"][0]
        if not described["State"].endswith("in-progress"):
            if described["State"].endswith("failed"):
                raise RuntimeError(f"prefix list {prefix_list_id}: {described.get('StateMessage') or described['State']}")
            return described
        time.sleep(1)
    raise TimeoutError(f"prefix list {prefix_list_id} still being modified after 60 s")


def set_prefix_entries(ec2: Any, prefix_list_id: str, add: list[str], remove: list[str], description: str) -> None:
    """Resize the list to what it will hold, then change its entries (AWS refuses both in one call)."""
    current = _wait_modified(ec2, prefix_list_id)
    name = current["PrefixListName"]
    size = max(1, len(set(prefix_list_entries(ec2, prefix_list_id)) | set(add)))
    if size > int(current.get("MaxEntries") or 0):  # grow before adding; shrink after removing
        ec2.modify_managed_prefix_list(PrefixListId=prefix_list_id, PrefixListName=name, MaxEntries=size)
        current = _wait_modified(ec2, prefix_list_id)
    if add or remove:
        ec2.modify_managed_prefix_list(
            PrefixListId=prefix_list_id, PrefixListName=name, CurrentVersion=current["Version"],
            AddEntries=[{"Cidr": cidr, "Description": description} for cidr in add],
            RemoveEntries=[{"Cidr": cidr} for cidr in remove])
        current = _wait_modified(ec2, prefix_list_id)
    left = max(1, len(prefix_list_entries(ec2, prefix_list_id)))
    if left < int(current.get("MaxEntries") or 0):
        ec2.modify_managed_prefix_list(PrefixListId=prefix_list_id, PrefixListName=name, MaxEntries=left)
        _wait_modified(ec2, prefix_list_id)


def _group_ids_of_eni(ec2: Any, eni: str) -> list[str]:
    described = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
    return [g["GroupId"] for g in described.get("Groups", [])]


def set_eni_groups(ec2: Any, eni: str, add: str | None = None, remove: set[str] | None = None) -> bool:
    """Add or remove groups on an ENI, keeping the others; True when it changed."""
    groups = _group_ids_of_eni(ec2, eni)
    wanted = [g for g in groups if g not in (remove or set())] + ([add] if add and add not in groups else [])
    if wanted == groups or not wanted:
        return False
    ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=wanted)
    return True


def _permission(rule: IngressRule) -> dict[str, Any]:
    permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": rule.from_port, "ToPort": rule.to_port}
    if rule.source_kind == "prefix-list":
        permission["PrefixListIds"] = [{"PrefixListId": rule.source_prefix_list_id, "Description": rule.description}]
    else:
        permission["UserIdGroupPairs"] = [{"GroupId": rule.source_group_id, "Description": rule.description}]
    return permission


def _authorize_rule(ec2: Any, rule: IngressRule, federation: str, execution: str, deployment: str) -> list[AddedRule]:
    response = ec2.authorize_security_group_ingress(
        GroupId=rule.group_id, IpPermissions=[_permission(rule)],
        TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": _tags(federation, deployment, execution, {
            SOURCE_CLUSTER_TAG: rule.source_cluster, TARGET_CLUSTER_TAG: rule.target_cluster,
            SOURCE_STACK_TAG: rule.source_stack, TARGET_STACK_TAG: rule.target_stack})}],
    )
    logger.info("authorized ingress", extra={"rule": rule.description, "group": rule.group_id})
    return [AddedRule(region=rule.region, group_id=rule.group_id, rule_id=created["SecurityGroupRuleId"])
            for created in response.get("SecurityGroupRules", [])]


def apply_network(ec2_for: Ec2For, network: NetworkPlan, rules: list[IngressRule], execution: str,
                  deployment: str) -> dict[str, Any]:
    """Create the groups and prefix lists, attach the groups, add entries and the missing rules (each again checked,
    so a re-run changes nothing); if any call fails, undo what this execution changed and re-raise."""
    federation = network.federation
    name = resource_name(deployment, federation)
    done: dict[str, Any] = {"createdGroups": [], "attached": [], "addedEntries": [], "added": [], "revoked": [],
                            "notes": network.notes}
    try:
        for vpc in network.vpcs:
            ec2 = ec2_for(vpc.region)
            vpc.group_id = federation_group(ec2, vpc.vpc_id, federation, deployment) or vpc.group_id
            if vpc.group_id is None:
                vpc.group_id = ec2.create_security_group(
                    GroupName=name, VpcId=vpc.vpc_id,
                    Description=f"slurm-multicluster {federation}: hosts of its members in this VPC (no rules of its own)",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(federation, deployment, execution)}],
                )["GroupId"]
                done["createdGroups"].append(vpc.group_id)
            if vpc.add_entries:
                description = f"slurm-multicluster {federation} {execution}"[:255]
                if vpc.prefix_list_id is None:
                    created = ec2.create_managed_prefix_list(
                        PrefixListName=name, AddressFamily="IPv4", MaxEntries=len(vpc.add_entries),
                        Entries=[{"Cidr": cidr, "Description": description} for cidr in vpc.add_entries],
                        TagSpecifications=[{"ResourceType": "prefix-list", "Tags": _tags(
                            federation, deployment, execution, {VPC_TAG: vpc.vpc_id})}],
                    )["PrefixList"]
                    vpc.prefix_list_id = created["PrefixListId"]
                    _wait_modified(ec2, vpc.prefix_list_id)
                else:
                    present = set(prefix_list_entries(ec2, vpc.prefix_list_id))
                    set_prefix_entries(ec2, vpc.prefix_list_id, [c for c in vpc.add_entries if c not in present], [],
                                       description)
                done["addedEntries"] += vpc.add_entries
        for attachment in network.attach:
            if set_eni_groups(ec2_for(attachment.region), attachment.network_interface_id,
                              add=network.vpc(attachment.vpc_id).group_id):
                done["attached"].append(attachment.network_interface_id)
        # first: a wider rule of the option's old value must not count as granting its new one
        done["revoked"] = [r.state() for r in revoke(ec2_for, network.revoke)]
        resolved = [rule.model_copy(update={
            # SrunPortRange's rules sit on the federation group, which may have been created just now
            "group_id": network.vpc(rule.vpc_id).group_id if rule.target_kind == "federation-group" else rule.group_id,
            "source_group_id": network.vpc(rule.vpc_id).group_id if rule.source_kind == "federation-group" else rule.source_group_id,
            "source_prefix_list_id": network.vpc(rule.vpc_id).prefix_list_id if rule.source_kind == "prefix-list" else None,
        }) for rule in rules]
        for rule in missing_rules(ec2_for, resolved):
            done["added"] += [r.state() for r in _authorize_rule(ec2_for(rule.region), rule, federation, execution,
                                                                 deployment)]
    except Exception:
        undo_network(ec2_for, network, execution, deployment)
        raise
    return done


def connect(ec2_for: Ec2For, quotas_for: Callable[[str], Any], members: list[Member], execution: str,
            deployment: str, srun_port_range: str = "") -> dict[str, Any]:
    """PlanPairing's network part then AuthorizeIngress's, in one call: the network a pairing of ``members`` leaves."""
    network, missing = plan_network(ec2_for, quotas_for, members, deployment, srun_port_range)
    return apply_network(ec2_for, network, missing, execution, deployment)


def undo_network(ec2_for: Ec2For, network: NetworkPlan, execution: str, deployment: str) -> dict[str, Any]:
    """Compensation: revoke the rules ``execution`` added, detach the group from the ENIs the plan attached it to,
    remove the entries the plan added, delete the groups and prefix lists ``execution`` created."""
    regions = sorted({vpc.region for vpc in network.vpcs})
    revoked = revoke(ec2_for, rules_added_by(ec2_for, regions, execution))
    undone: dict[str, Any] = {"revoked": [r.state() for r in revoked], "detached": [], "removedEntries": [],
                              "deleted": []}
    for vpc in network.vpcs:
        ec2 = ec2_for(vpc.region)
        group = federation_group(ec2, vpc.vpc_id, network.federation, deployment)
        for attachment in network.attach:
            if attachment.vpc_id == vpc.vpc_id and group and group not in attachment.groups_before:
                if _eni_exists(ec2, attachment.network_interface_id) and set_eni_groups(
                        ec2, attachment.network_interface_id, remove={group}):
                    undone["detached"].append(attachment.network_interface_id)
        current = read_vpc(ec2, vpc.region, vpc.vpc_id, network.federation, deployment)
        if current.prefix_list_id and vpc.add_entries:
            remove = [cidr for cidr in vpc.add_entries if cidr in current.entries and cidr not in vpc.entries]
            if remove and len(remove) == len(current.entries) and _created_by(ec2, current.prefix_list_id, execution):
                ec2.delete_managed_prefix_list(PrefixListId=current.prefix_list_id)
                undone["deleted"].append(current.prefix_list_id)
            elif remove:
                set_prefix_entries(ec2, current.prefix_list_id, [], remove, "")
            undone["removedEntries"] += remove
        if group and _created_by(ec2, group, execution) and not _carriers(ec2, group):
            ec2.delete_security_group(GroupId=group)
            undone["deleted"].append(group)
    return undone


def _eni_exists(ec2: Any, eni: str) -> bool:
    try:
        ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])
        return True
    except ClientError:
        return False


def _created_by(ec2: Any, resource_id: str, execution: str) -> bool:
    described = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]},
                                           {"Name": "key", "Values": [EXECUTION_TAG]}])["Tags"]
    return any(t["Value"] == execution for t in described)


def _carriers(ec2: Any, group_id: str) -> list[dict[str, Any]]:
    """The network interfaces that carry ``group_id`` (a group still attached cannot be deleted)."""
    paginator = ec2.get_paginator("describe_network_interfaces")
    return [eni for page in paginator.paginate(Filters=[{"Name": "group-id", "Values": [group_id]}])
            for eni in page["NetworkInterfaces"]]


# ---------------------------------------------------------------- rules by tag (rollback, unpairing, sweep)


def revoke(ec2_for: Ec2For, rules: list[AddedRule]) -> list[AddedRule]:
    """Revoke the given rules (already-missing ones are fine); returns what was revoked."""
    revoked = []
    present: dict[tuple[str, str], set[str]] = {}  # the rules of each group, read once
    for rule in rules:
        ec2 = ec2_for(rule.region)
        group = (rule.region, rule.group_id)
        if group not in present:
            present[group] = {r["SecurityGroupRuleId"] for r in rules_on_group(ec2, rule.group_id)}
        if rule.rule_id not in present[group]:
            continue
        ec2.revoke_security_group_ingress(GroupId=rule.group_id, SecurityGroupRuleIds=[rule.rule_id])
        present[group].discard(rule.rule_id)
        logger.info("revoked ingress", extra={"group": rule.group_id, "rule_id": rule.rule_id})
        revoked.append(rule)
    return revoked


def rules_added_by(ec2_for: Ec2For, regions: list[str], execution: str) -> list[AddedRule]:
    """Every rule tagged as created by ``execution`` (what a rollback must revoke)."""
    found = []
    for region in regions:
        paginator = ec2_for(region).get_paginator("describe_security_group_rules")
        for page in paginator.paginate(Filters=[{"Name": f"tag:{EXECUTION_TAG}", "Values": [execution]}]):
            found += [
                AddedRule(region=region, group_id=r["GroupId"], rule_id=r["SecurityGroupRuleId"])
                for r in page["SecurityGroupRules"]
            ]
    return found


def _our_rules(ec2_for: Ec2For, regions: list[str], deployment: str,
               filters: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(region, rule) of every rule this deployment tagged as its own that matches ``filters``."""
    found = []
    for region in regions:
        paginator = ec2_for(region).get_paginator("describe_security_group_rules")
        owned = [{"Name": "tag-key", "Values": [OWNER_TAG]}, {"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [deployment]}]
        for page in paginator.paginate(Filters=[*owned, *filters]):
            found += [(region, rule) for rule in page["SecurityGroupRules"]]
    return found


def federations_of(ec2_for: Ec2For, regions: list[str], stack_id: str, deployment: str) -> list[str]:
    """The federations whose rules (this deployment's) name the stack ``stack_id`` as source or target: where it
    was paired, whatever its tags say now."""
    names = set()
    for tag in (SOURCE_STACK_TAG, TARGET_STACK_TAG):
        for _, rule in _our_rules(ec2_for, regions, deployment, [{"Name": f"tag:{tag}", "Values": [stack_id]}]):
            names.update(t["Value"] for t in rule.get("Tags", []) if t["Key"] == OWNER_TAG)
    return sorted(names)


def federation_groups(ec2: Any, federation: str, deployment: str) -> list[dict[str, Any]]:
    """This deployment's federation groups of ``federation`` in the client's region (one per VPC)."""
    paginator = ec2.get_paginator("describe_security_groups")
    return [group
            for page in paginator.paginate(Filters=[{"Name": "group-name", "Values": [resource_name(deployment, federation)]},
                                                    {"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [deployment]},
                                                    {"Name": f"tag:{OWNER_TAG}", "Values": [federation]}])
            for group in page["SecurityGroups"]]


def rules_touching(ec2_for: Ec2For, regions: list[str], federation: str, stack_id: str,
                   group_ids: list[str], deployment: str) -> list[AddedRule]:
    """Every rule this deployment added in ``federation`` that sits on or references one of a departing cluster's
    ``group_ids``, or names the stack ``stack_id`` as its source or target. A same-named stack elsewhere is another
    StackId: its rules are not touched. The federation's own groups are among a head node's groups as AWS reports
    them (attached, or HeadNode AdditionalSecurityGroups) but are no cluster's: the rules on and from them stay for
    the remaining members (shrink_network removes them with the last member of a VPC)."""
    groups = set(group_ids) - {g["GroupId"] for region in regions
                               for g in federation_groups(ec2_for(region), federation, deployment)}
    return _rules_on_or_from(ec2_for, regions, federation, stack_id, groups, deployment)


def _rules_on_or_from(ec2_for: Ec2For, regions: list[str], federation: str, stack_id: str, groups: set[str],
                      deployment: str) -> list[AddedRule]:
    """Our rules of ``federation`` on or referencing one of ``groups``, or naming the stack ``stack_id``."""
    touching = []
    for region, rule in _our_rules(ec2_for, regions, deployment, [{"Name": f"tag:{OWNER_TAG}", "Values": [federation]}]):
        tags = {t["Key"]: t["Value"] for t in rule.get("Tags", [])}
        if (rule["GroupId"] in groups or rule.get("ReferencedGroupInfo", {}).get("GroupId") in groups
                or stack_id in (tags.get(SOURCE_STACK_TAG), tags.get(TARGET_STACK_TAG))):
            touching.append(AddedRule(region=region, group_id=rule["GroupId"], rule_id=rule["SecurityGroupRuleId"]))
    return touching


def detach_federation_groups(ec2: Any, instance: dict[str, Any], federation: str, deployment: str) -> list[str]:
    """Take the federation's group off every ENI of a departing instance (its stack keeps nothing of ours)."""
    detached = []
    for eni in instance.get("NetworkInterfaces", []):
        group = federation_group(ec2, eni.get("VpcId") or instance["VpcId"], federation, deployment)
        if group and set_eni_groups(ec2, eni["NetworkInterfaceId"], remove={group}):
            detached.append(eni["NetworkInterfaceId"])
    return detached


def shrink_network(ec2_for: Ec2For, regions: list[str], federation: str, remaining: list[Member],
                   deployment: str) -> dict[str, Any]:
    """After a departure (under the lease): every prefix list holds exactly the remaining members' subnets outside
    its VPC (their queues' subnets included, as the pairing's plan counts them; a member whose head node did not
    report them, or reported refused ones, keeps only those AWS shows until its next pairing or sweep); a VPC without
    a remaining member loses its prefix list and its federation group (our rules referencing them revoked first; a
    group still attached to a departing, not yet terminated ENI is left for the sweep)."""
    queue, refused = queue_subnet_cidrs(ec2_for, remaining)
    if refused:
        logger.warning("queue subnets refused", extra={"refused": list(refused.values())})
    outcome: dict[str, Any] = {"removedEntries": [], "deleted": [], "leftForTheSweep": [],
                               "queueSubnetsRefused": list(refused.values())}
    member_vpcs = {m.head_node.vpc_id for m in remaining}
    for region in regions:
        ec2 = ec2_for(region)
        for prefix_list in federation_prefix_lists(ec2, federation, deployment):
            vpc_id, pl_id = _vpc_tag(prefix_list), prefix_list["PrefixListId"]
            wanted = {c for m in remaining if m.head_node.vpc_id != vpc_id for c in member_cidrs(m, queue.get(m.stack_id))}
            if vpc_id in member_vpcs and wanted:
                extra = [c for c in prefix_list_entries(ec2, pl_id) if c not in wanted]
                if extra:
                    set_prefix_entries(ec2, pl_id, [], extra, "")
                    outcome["removedEntries"] += extra
                continue
            revoke(ec2_for, [AddedRule(region=region, group_id=r["GroupId"], rule_id=r["SecurityGroupRuleId"])
                             for _, r in _our_rules(ec2_for, [region], deployment,
                                                    [{"Name": f"tag:{OWNER_TAG}", "Values": [federation]}])
                             if r.get("PrefixListId") == pl_id])
            ec2.delete_managed_prefix_list(PrefixListId=pl_id)
            outcome["deleted"].append(pl_id)
        for group in federation_groups(ec2, federation, deployment):
            if group["VpcId"] in member_vpcs:
                continue
            revoke(ec2_for, _rules_on_or_from(ec2_for, [region], federation, "", {group["GroupId"]}, deployment))
            if _carriers(ec2, group["GroupId"]):
                outcome["leftForTheSweep"].append(group["GroupId"])
                continue
            ec2.delete_security_group(GroupId=group["GroupId"])
            outcome["deleted"].append(group["GroupId"])
    return outcome
