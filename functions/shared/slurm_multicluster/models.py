"""The pairing workflow's state, as typed models. Step Functions passes them between steps as camelCase JSON."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from slurm_multicluster import validation as v


def _matching(pattern, what: str) -> AfterValidator:
    return AfterValidator(lambda value: v.require(pattern, value, what))


# Strings from outside, checked where a model is built (InvalidInput names the field and the rule).
StackName = Annotated[str, _matching(v.STACK_NAME, "stack name")]
ClusterName = Annotated[str, _matching(v.CLUSTER_NAME, "cluster name")]
SlurmClusterName = Annotated[str, _matching(v.SLURM_CLUSTER_NAME, "Slurm ClusterName")]
FederationName = Annotated[str, _matching(v.FEDERATION_NAME, "federation name")]
Region = Annotated[str, _matching(v.REGION, "region")]
ExecutionName = Annotated[str, _matching(v.BACKUP_ID, "execution name")]
Sha256 = Annotated[str, _matching(v.SHA256, "munge key fingerprint")]
SharedMungeKey = Annotated[str, _matching(v.SHARED_MUNGE_KEY, "shared munge key fingerprint")]
SubnetId = Annotated[str, _matching(v.SUBNET_ID, "subnet id")]


class StateModel(BaseModel):
    """Base for everything that travels through Step Functions state: camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def state(self) -> dict:
        """The JSON-ready form that a Lambda returns to Step Functions."""
        return self.model_dump(mode="json", by_alias=True)


class PairingRequest(StateModel):
    """A validated request to pair one cluster (from an EventBridge event or a manual invocation)."""

    action: Literal["pair", "unpair", "ignore"]
    reason: str = ""
    stack_name: StackName  # any stack's events arrive here; only a cluster's name becomes a Member
    stack_id: str | None = None
    region: Region
    dry_run: bool = False
    remove_from_accounting: bool | None = None  # unpairing: None = the deployment's UnpairRemovesAccounting
    federation: FederationName | None = None  # unpairing by hand a cluster that is neither tagged nor has our rules
    trigger: str
    event_id: str | None = None
    execution_name: ExecutionName


class HeadNode(StateModel):
    """A cluster's head node as EC2 sees it."""

    instance_id: str
    private_ip: str
    security_group_ids: list[str]
    vpc_id: str
    role_arn: str | None = None
    network_interface_id: str | None = None  # its primary ENI: where the federation security group is attached
    subnet_cidr: str | None = None  # a peer in another VPC reaches the federation through this CIDR


class SlurmSettings(StateModel):
    """The live Slurm facts a head node reports (discover-slurm.sh); never key material, only its fingerprint."""

    cluster_name: SlurmClusterName
    slurmctld_host: str | None = None
    slurmctld_port: str
    accounting_storage_type: str | None = None
    accounting_storage_host: str | None = None
    accounting_storage_port: int | None = None
    accounting_file: str | None = None
    dbd_port: int | None = None
    slurmd_port: int = Field(default=6818, ge=1, le=65535)  # where its compute nodes' slurmd listens (srun -M)
    srun_port_range: str | None = None  # "LOW-HIGH" srun listens on; None = ephemeral ports (SrunPortRange unset)
    slurmdbd_unit: bool = False
    slurmdbd_active: bool = False
    slurmctld_active: bool = True
    slurm_version: str
    slurmdbd_version: str | None = None
    munge_version: str | None = None
    munge_key_sha256: Sha256
    registered_clusters: list[str] = []  # "name=ControlHost" in this node's slurmdbd (accounting head only)
    # the shared copies compute and login nodes boot from: "<file>=<sha256>", "<file>=" when a dir holds none
    shared_munge_keys: list[SharedMungeKey] = []
    # every queue's subnets (ParallelCluster's fleet-config.json): a queue's launch template names only its first;
    # where its compute nodes may launch, so sources of submissions (ingress.queue_subnet_cidrs checks their VPC)
    queue_subnet_ids: list[SubnetId] = []

    def shared_keys_not(self, sha256: str) -> list[str]:
        """The shared munge key copies that do not hold the key with this fingerprint (missing ones included)."""
        return [entry.split("=", 1)[0] for entry in self.shared_munge_keys if entry.split("=", 1)[1] != sha256]

    def control_hosts(self) -> dict[str, str]:
        """ClusterName -> ControlHost registered in this node's slurmdbd ("" when not connected)."""
        return dict(entry.split("=", 1) for entry in self.registered_clusters if "=" in entry)

    @field_validator("slurmctld_port")
    @classmethod
    def _ports(cls, value: str) -> str:
        v.port_range(value, "SlurmctldPort")
        return value

    @field_validator("srun_port_range")
    @classmethod
    def _srun_ports(cls, value: str | None) -> str | None:
        if value is None:
            return None
        low, high = v.port_range(value, "SrunPortRange")
        return f"{low}-{high}"


class Member(StateModel):
    """One ParallelCluster cluster of a federation."""

    cluster_name: str = Field(description="ParallelCluster cluster name (= CloudFormation stack name)")
    stack_id: str
    region: str
    federation: str
    is_accounting: bool
    head_node: HeadNode
    compute_instance_ids: list[str] = Field(default_factory=list)
    login_instance_ids: list[str] = Field(default_factory=list)
    # Sources of submissions besides the head node: the subnets and security groups of its running login and
    # compute nodes (a job that submits a job to a peer), as EC2 sees them.
    node_subnet_cidrs: list[str] = Field(default_factory=list)
    node_security_group_sets: list[list[str]] = Field(default_factory=list)
    slurm: SlurmSettings | None = None


class IngressRule(StateModel):
    """One least-privilege inbound rule on a member's head node security group, or (SrunPortRange on) on a VPC's
    federation group (ingress.py: its targets and sources)."""

    region: str
    group_id: str  # "" for a federation group AuthorizeIngress has yet to create
    # head-node-group: a member's head node group (Slurm's daemons on the head); federation-group: the federation
    # group of the VPC (slurmd and srun's ports on every federation host, SrunPortRange only)
    target_kind: Literal["head-node-group", "federation-group"] = "head-node-group"
    vpc_id: str = ""
    from_port: int
    to_port: int
    # federation-group: the federation's group in the target's VPC (its hosts); prefix-list: the federation's
    # prefix list of the other VPCs' member subnets; group: one member's node group that cannot carry ours yet.
    source_kind: Literal["federation-group", "prefix-list", "group"] = "group"
    source_group_id: str | None = None  # set for "group" (and for the others once they exist)
    source_cidr: str | None = None
    source_prefix_list_id: str | None = None  # set for "prefix-list" once the list exists
    source_cluster: str
    target_cluster: str
    source_stack: str = ""  # "" for the federation-wide sources
    target_stack: str  # "" for a federation group (federation-wide, no member's)
    purpose: Literal["slurmdbd", "slurmctld", "slurmdbd+slurmctld", "slurmd", "srun"]
    description: str

    def same_permission(self, other: IngressRule) -> bool:
        """True when both open the same ports on the same group to the same source."""
        return (self.group_id, self.vpc_id, self.target_kind, self.from_port, self.to_port, self.source_kind,
                self.source_group_id, self.source_prefix_list_id) == (
            other.group_id, other.vpc_id, other.target_kind, other.from_port, other.to_port, other.source_kind,
            other.source_group_id, other.source_prefix_list_id)


class AddedRule(StateModel):
    """A rule this execution created (so a rollback revokes exactly these)."""

    region: str
    group_id: str
    rule_id: str
