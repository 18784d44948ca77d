"""The pairing and unpairing state machines' state as a whole, as each Lambda step receives it."""

from __future__ import annotations

from slurm_multicluster.discovery import SkippedMember
from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.models import Member, PairingRequest, StateModel
from slurm_multicluster.pairing import Plan
from slurm_multicluster.unpairing import Departure


class PairingState(StateModel):
    request: PairingRequest
    members: list[Member] = []
    plan: Plan | None = None
    skipped: list[SkippedMember] = []  # admitted peers DiscoverFederation left out (they keep their secret access)

    def planned(self) -> Plan:
        """The plan from PlanPairing (steps after it cannot run without one)."""
        if self.plan is None:
            raise InvalidInput("this step needs the plan made by PlanPairing")
        return self.plan


class UnpairingState(StateModel):
    """The unpairing state machine's state, as each of its Lambda steps receives it."""

    request: PairingRequest
    departure: Departure | None = None
    remaining: list[Member] = []

    def departing(self) -> Departure:
        """The departure found by DiscoverDeparture (the later steps cannot run without it)."""
        if self.departure is None or not self.departure.member:
            raise InvalidInput("this step needs a federation member found by DiscoverDeparture")
        return self.departure
