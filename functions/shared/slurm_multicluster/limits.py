"""Sizes the workflows' time budgets are computed for (docs/design.md, "Time budgets"; tests/unit/test_time_budgets.py).

A Map's worst case is (items / MaxConcurrency) waves of its slowest item, so the number of items must be bounded
for an execution's TimeoutSeconds to hold: the discovery steps refuse more, before anything changes.
"""

from __future__ import annotations

from slurm_multicluster.errors import PrerequisiteFailed

MAX_FEDERATION_MEMBERS = 50  # Maps over members run at most 40 at once (inline Map): two waves at 50 (Time budgets)
MAX_SWEEP_CLUSTERS = 40  # tagged clusters one sweep checks, one at a time


def require_at_most(count: int, limit: int, what: str, fix: str) -> None:
    """PrerequisiteFailed when ``count`` exceeds ``limit``: the workflow's time budget holds only up to it."""
    if count > limit:
        raise PrerequisiteFailed(
            f"{what}: {count}, more than the {limit} the workflows' time limits are made for (docs/design.md, "
            f"Time budgets): {fix}"
        )
