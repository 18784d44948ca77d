"""What users see while the product changes clusters: submissions probed in a loop from a node (bench only)."""

from __future__ import annotations

import threading
import time

from lab import Lab


class SubmitProber(threading.Thread):
    """`sbatch --clusters=<cluster> --test-only --wrap true` from a node, for each (node, cluster), in a loop,
    until `done` is set: when did each start working, and how long did it keep failing once it had worked?"""

    def __init__(self, lab: Lab, probes: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.lab, self.probes = lab, probes
        self.samples: dict[tuple[str, str], list[tuple[float, bool]]] = {p: [] for p in probes}
        self.waits: dict[tuple[str, str], list[float]] = {p: [] for p in probes}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for node, cluster in self.probes:
                started = time.monotonic()
                ok = self.lab.exec(node, ["sbatch", f"--clusters={cluster}", "--test-only", "--wrap", "true"],
                                   timeout=60).returncode == 0
                self.samples[(node, cluster)].append((time.monotonic(), ok))
                if ok:
                    self.waits[(node, cluster)].append(time.monotonic() - started)

    def first_success(self, probe: tuple[str, str], since: float) -> float | None:
        """Seconds from `since` (time.monotonic) to the first submission that worked, None if none did."""
        return next((round(at - since, 2) for at, ok in self.samples[probe] if ok and at >= since), None)

    def outage(self, probe: tuple[str, str]) -> float:
        """The longest stretch (seconds) of failing submissions after one had worked (a refusal users notice)."""
        longest, failing_since, worked = 0.0, None, False
        samples = self.samples[probe]
        for at, ok in samples:
            if ok:
                if failing_since is not None:
                    longest = max(longest, at - failing_since)
                failing_since, worked = None, True
            elif worked and failing_since is None:
                failing_since = at
        if failing_since is not None:
            longest = max(longest, samples[-1][0] - failing_since)
        return round(longest, 2)

    def longest_wait(self, probe: tuple[str, str]) -> float:
        """The longest a submission that was accepted took (sbatch retries while slurmctld restarts)."""
        return round(max(self.waits[probe], default=0.0), 2)

    def longest_outage(self) -> float:
        """The longest outage over every probe."""
        return max((self.outage(p) for p in self.probes), default=0.0)
