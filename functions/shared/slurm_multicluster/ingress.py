"""Least-privilege security group rules between federation members' head nodes.

Flows (notes/aws.md): every member -> accounting head DbdPort; every member <-> every member SlurmctldPort
range (the accounting head included, which covers slurmdbd -> slurmctld). Same region: the peer's security
group is the source; another region: the peer's private IP /32.
"""

from __future__ import annotations

from typing import Any, Callable

from aws_lambda_powertools import Logger

from slurm_multicluster.models import AddedRule, IngressRule, Member
from slurm_multicluster.validation import port_range

logger = Logger(child=True)

OWNER_TAG = "slurm-multicluster:federation"
DEPLOYMENT_TAG = "slurm-multicluster:deployment"  # another deployment's rules are never read, revoked or counted
EXECUTION_TAG = "slurm-multicluster:execution"
SOURCE_CLUSTER_TAG = "slurm-multicluster:source-cluster"  # names, for people reading the console
TARGET_CLUSTER_TAG = "slurm-multicluster:target-cluster"
SOURCE_STACK_TAG = "slurm-multicluster:source-stack"  # StackIds: the identity the unpairing and the sweep use
TARGET_STACK_TAG = "slurm-multicluster:target-stack"


def _rule(source: Member, target: Member, purpose: str, ports: tuple[int, int]) -> IngressRule:
    same_region = source.region == target.region
    return IngressRule(
        region=target.region,
        group_id=target.head_node.security_group_ids[0],
        from_port=ports[0],
        to_port=ports[1],
        source_group_id=source.head_node.security_group_ids[0] if same_region else None,
        source_cidr=None if same_region else f"{source.head_node.private_ip}/32",
        source_cluster=source.cluster_name,
        target_cluster=target.cluster_name,
        source_stack=source.stack_id,
        target_stack=target.stack_id,
        purpose=purpose,
        # Descriptions allow a small character set (no '>'): "to" reads fine.
        description=f"slurm-multicluster {target.federation}: {source.cluster_name} to {target.cluster_name} {purpose}",
    )


def plan_rules(new: Member, members: list[Member]) -> list[IngressRule]:
    """The rules that connect ``new`` with every other member, without duplicates."""
    rules: list[IngressRule] = []
    for peer in members:
        if peer.stack_id == new.stack_id:
            continue
        assert peer.slurm and new.slurm, "Slurm settings must be discovered before planning rules"
        rules.append(_rule(new, peer, "slurmctld", port_range(peer.slurm.slurmctld_port)))
        rules.append(_rule(peer, new, "slurmctld", port_range(new.slurm.slurmctld_port)))
        for source, target in ((new, peer), (peer, new)):
            if target.is_accounting and target.slurm and target.slurm.dbd_port:
                rules.append(_rule(source, target, "slurmdbd", (target.slurm.dbd_port, target.slurm.dbd_port)))
    unique: list[IngressRule] = []
    for rule in rules:
        if not any(rule.same_permission(kept) for kept in unique):
            unique.append(rule)
    return unique


def _permission(rule: IngressRule) -> dict[str, Any]:
    permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": rule.from_port, "ToPort": rule.to_port}
    if rule.source_group_id:
        permission["UserIdGroupPairs"] = [{"GroupId": rule.source_group_id, "Description": rule.description}]
    else:
        permission["IpRanges"] = [{"CidrIp": rule.source_cidr, "Description": rule.description}]
    return permission


def _exists(existing: list[dict[str, Any]], rule: IngressRule) -> bool:
    for current in existing:
        if current.get("IsEgress") or current.get("IpProtocol") not in ("tcp", "-1"):
            continue
        if current["IpProtocol"] == "tcp" and (current["FromPort"], current["ToPort"]) != (rule.from_port, rule.to_port):
            continue
        source_group = current.get("ReferencedGroupInfo", {}).get("GroupId")
        if rule.source_group_id and source_group == rule.source_group_id:
            return True
        if rule.source_cidr and current.get("CidrIpv4") == rule.source_cidr:
            return True
    return False


def rules_on_group(ec2: Any, group_id: str) -> list[dict[str, Any]]:
    paginator = ec2.get_paginator("describe_security_group_rules")
    return [
        rule
        for page in paginator.paginate(Filters=[{"Name": "group-id", "Values": [group_id]}])
        for rule in page["SecurityGroupRules"]
    ]


def missing_rules(ec2_for: Callable[[str], Any], rules: list[IngressRule]) -> list[IngressRule]:
    """The planned rules that no existing rule (ours or the admin's) already grants."""
    cache: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for rule in rules:
        if rule.group_id not in cache:
            cache[rule.group_id] = rules_on_group(ec2_for(rule.region), rule.group_id)
        if not _exists(cache[rule.group_id], rule):
            missing.append(rule)
    return missing


def authorize(ec2_for: Callable[[str], Any], rules: list[IngressRule], federation: str, execution: str,
              deployment: str) -> list[AddedRule]:
    """Add the missing rules, tagged as ours; if any call fails, revoke what this call added and re-raise."""
    added: list[AddedRule] = []
    try:
        for rule in missing_rules(ec2_for, rules):
            response = ec2_for(rule.region).authorize_security_group_ingress(
                GroupId=rule.group_id,
                IpPermissions=[_permission(rule)],
                TagSpecifications=[
                    {
                        "ResourceType": "security-group-rule",
                        "Tags": [
                            {"Key": OWNER_TAG, "Value": federation},
                            {"Key": DEPLOYMENT_TAG, "Value": deployment},
                            {"Key": EXECUTION_TAG, "Value": execution},
                            {"Key": SOURCE_CLUSTER_TAG, "Value": rule.source_cluster},
                            {"Key": TARGET_CLUSTER_TAG, "Value": rule.target_cluster},
                            {"Key": SOURCE_STACK_TAG, "Value": rule.source_stack},
                            {"Key": TARGET_STACK_TAG, "Value": rule.target_stack},
                        ],
                    }
                ],
            )
            for created in response.get("SecurityGroupRules", []):
                added.append(AddedRule(region=rule.region, group_id=rule.group_id, rule_id=created["SecurityGroupRuleId"]))
            logger.info("authorized ingress", extra={"rule": rule.description, "group": rule.group_id})
    except Exception:
        revoke(ec2_for, added)
        raise
    return added


def revoke(ec2_for: Callable[[str], Any], rules: list[AddedRule]) -> list[AddedRule]:
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


def rules_added_by(ec2_for: Callable[[str], Any], regions: list[str], execution: str) -> list[AddedRule]:
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


def _our_rules(ec2_for: Callable[[str], Any], regions: list[str], deployment: str,
               filters: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(region, rule) of every rule this deployment tagged as its own that matches ``filters``."""
    found = []
    for region in regions:
        paginator = ec2_for(region).get_paginator("describe_security_group_rules")
        owned = [{"Name": "tag-key", "Values": [OWNER_TAG]}, {"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [deployment]}]
        for page in paginator.paginate(Filters=[*owned, *filters]):
            found += [(region, rule) for rule in page["SecurityGroupRules"]]
    return found


def federations_of(ec2_for: Callable[[str], Any], regions: list[str], stack_id: str, deployment: str) -> list[str]:
    """The federations whose rules (this deployment's) name the stack ``stack_id`` as source or target: where it
    was paired, whatever its tags say now."""
    names = set()
    for tag in (SOURCE_STACK_TAG, TARGET_STACK_TAG):
        for _, rule in _our_rules(ec2_for, regions, deployment, [{"Name": f"tag:{tag}", "Values": [stack_id]}]):
            names.update(t["Value"] for t in rule.get("Tags", []) if t["Key"] == OWNER_TAG)
    return sorted(names)


def rules_touching(ec2_for: Callable[[str], Any], regions: list[str], federation: str, stack_id: str,
                   group_ids: list[str], deployment: str) -> list[AddedRule]:
    """Every rule this deployment added in ``federation`` that sits on or references one of ``group_ids``, or names
    the stack ``stack_id`` as its source or target (a /32 rule from another region, a group the stack does not own).
    A same-named stack elsewhere is another StackId: its rules are not touched."""
    groups = set(group_ids)
    touching = []
    for region, rule in _our_rules(ec2_for, regions, deployment, [{"Name": f"tag:{OWNER_TAG}", "Values": [federation]}]):
        tags = {t["Key"]: t["Value"] for t in rule.get("Tags", [])}
        if (rule["GroupId"] in groups or rule.get("ReferencedGroupInfo", {}).get("GroupId") in groups
                or stack_id in (tags.get(SOURCE_STACK_TAG), tags.get(TARGET_STACK_TAG))):
            touching.append(AddedRule(region=region, group_id=rule["GroupId"], rule_id=rule["SecurityGroupRuleId"]))
    return touching
