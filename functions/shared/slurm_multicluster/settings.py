"""Deployment settings, read from the Lambda environment that template.yaml sets."""

from __future__ import annotations

import os
from pydantic import BaseModel, Field, field_validator

from slurm_multicluster import validation as v


class Settings(BaseModel):
    """What the template parameters configure; every function reads the same names."""

    deployment_id: str = "default"  # namespaces everything this deployment owns (DeploymentId parameter)
    deployment_tag_key: str = "slurm-multicluster:deployment"  # on the secrets this deployment created itself
    federation_tag_key: str = "slurm-multicluster:federation"
    deployment_region: str = ""
    federation_regions: list[str] = Field(default_factory=list)
    secret_name_prefix: str = "slurm-multicluster"
    munge_key_kms_key_arn: str = ""  # MungeKeyEncryptionKey: the only key a federation secret of ours is encrypted with
    break_glass_role_arn: str = ""  # the one role besides member head nodes the secret policy does not deny
    idempotency_table: str = ""
    node_command_timeout_seconds: int = 600
    verify_deadline_seconds: int = 120
    stop_member_slurmdbd: bool = True
    federation_lease_table: str = ""
    federation_lease_seconds: int = 46800
    munge_key_bytes: int = 1024
    unpair_removes_accounting: bool = False
    # SrunPortRange: "" = interactive srun/salloc -M not opened (the default); "LOW-HIGH" = every member must run
    # with exactly this SrunPortRange, and the federation groups open SlurmdPort and it (docs/design.md, Network)
    srun_port_range: str = ""

    @field_validator("srun_port_range")
    @classmethod
    def _srun_port_range(cls, value: str) -> str:
        return v.srun_port_range(value)

    @property
    def member_regions(self) -> list[str]:
        """Where federation members may live: this deployment's region and the FederationRegions."""
        return list(dict.fromkeys(r for r in [self.deployment_region, *self.federation_regions] if r))

    def regions_to_search(self, cluster_region: str) -> list[str]:
        """The regions whose stacks can be federation members: the cluster's, this deployment's, the listed ones."""
        regions = [cluster_region, self.deployment_region, *self.federation_regions]
        return list(dict.fromkeys(r for r in regions if r))

    def munge_key_secret_name(self, federation: str) -> str:
        """The federation's munge key secret, in ParallelCluster's MungeKeySecretArn format."""
        return f"{self.secret_name_prefix}/{self.deployment_id}/{federation}/munge-key"


def settings() -> Settings:
    """Settings from the environment."""
    env = os.environ
    return Settings(
        deployment_id=env.get("DEPLOYMENT_ID", "default"),
        federation_tag_key=env.get("FEDERATION_TAG_KEY", "slurm-multicluster:federation"),
        deployment_region=env.get("AWS_REGION", ""),
        federation_regions=[r.strip() for r in env.get("FEDERATION_REGIONS", "").split(",") if r.strip()],
        secret_name_prefix=env.get("SECRET_NAME_PREFIX", "slurm-multicluster"),
        munge_key_kms_key_arn=env.get("MUNGE_KEY_KMS_KEY_ARN", ""),
        break_glass_role_arn=env.get("BREAK_GLASS_ROLE_ARN", ""),
        idempotency_table=env.get("IDEMPOTENCY_TABLE", ""),
        node_command_timeout_seconds=int(env.get("NODE_COMMAND_TIMEOUT_SECONDS", "600")),
        verify_deadline_seconds=int(env.get("VERIFY_DEADLINE_SECONDS", "120")),
        stop_member_slurmdbd=env.get("STOP_MEMBER_SLURMDBD", "true").lower() == "true",
        federation_lease_table=env.get("FEDERATION_LEASE_TABLE", ""),
        federation_lease_seconds=int(env.get("FEDERATION_LEASE_SECONDS", "46800")),
        munge_key_bytes=int(env.get("MUNGE_KEY_BYTES", "1024")),
        unpair_removes_accounting=env.get("UNPAIR_REMOVES_ACCOUNTING", "false").lower() == "true",
        srun_port_range=env.get("SRUN_PORT_RANGE", "").strip(),
    )
