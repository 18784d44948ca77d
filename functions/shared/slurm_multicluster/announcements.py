"""Events this product announces on the EventBridge bus (source slurm-multicluster), for administrators' rules."""

from __future__ import annotations

import json
from typing import Any

SOURCE = "slurm-multicluster"
ENTRIES_PER_CALL = 10  # PutEvents takes at most 10 entries


def publish(events: Any, bus: str, detail_type: str, details: list[dict[str, Any]]) -> None:
    """Put one event of ``detail_type`` per detail on ``bus``; RuntimeError when EventBridge refuses any."""
    for start in range(0, len(details), ENTRIES_PER_CALL):
        response = events.put_events(Entries=[
            {"EventBusName": bus, "Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail)}
            for detail in details[start:start + ENTRIES_PER_CALL]])
        if response.get("FailedEntryCount"):
            raise RuntimeError(f"{detail_type} events not accepted: {response['Entries']}")
