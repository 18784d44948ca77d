"""The pairing state machine's state as a whole, as each Lambda step receives it."""

from __future__ import annotations

from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.models import Member, PairingRequest, StateModel
from slurm_multicluster.pairing import Plan


class PairingState(StateModel):
    request: PairingRequest
    members: list[Member] = []
    plan: Plan | None = None

    def planned(self) -> Plan:
        """The plan from PlanPairing (steps after it cannot run without one)."""
        if self.plan is None:
            raise InvalidInput("this step needs the plan made by PlanPairing")
        return self.plan
