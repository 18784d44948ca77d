"""Watch a lab's daemons from the host, in a process of its own (stdlib only; started by bench/pairing.py).

Reads one JSON line on stdin: {"systemctl": "<lab root>/bin/systemctl", "units": [[node, unit, pid file], ...],
"netns": {"net:[inode]": node, ...}, "interval": seconds}. Prints "ready" after the first poll, then polls until
it reads "stop" (or EOF) and prints one JSON object: {"instances": [...], "calls": [...]}.

- instances: every main process of every unit, from the lab systemctl's pid files (/run/lab/<unit>.pid on the
  node, under the lab root on the host): pid, spawn time (/proc/<pid>/stat starttime, 10 ms ticks), and the
  first poll that saw it gone or a zombie.
- calls: every `systemctl start|stop|restart UNIT...` process of that lab (argv[1] is the lab's systemctl),
  its node (from its network namespace), start time (starttime) and the first poll that saw it gone.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Instance:
    """One main process of a unit on a node."""

    node: str
    unit: str
    pid: int
    spawned: float  # wall clock, from /proc/<pid>/stat starttime
    died: float | None = None  # first poll that saw it gone (or a zombie)


@dataclass
class SystemctlCall:
    node: str
    action: str
    units: list[str]
    started: float
    ended: float | None = None


def _stat(pid: int) -> tuple[str, str, str] | None:
    """(state, start time in ticks, parent pid) of a process, None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], fields[19], fields[1]


def _argv(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


class DaemonWatcher:
    def __init__(self, systemctl: str, units: list[list[str]], netns: dict[str, str]) -> None:
        self.systemctl = systemctl
        self.units = [(node, unit, Path(pid_file)) for node, unit, pid_file in units]
        self.netns_node = netns
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.boot_wall = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        self.instances: list[Instance] = []
        self.current: dict[tuple[str, str], Instance] = {}
        self.calls: list[SystemctlCall] = []
        self._tracked: dict[int, tuple[str, SystemctlCall]] = {}  # pid -> (start time, call)
        self._seen: dict[int, int] = {}  # pid -> cmdline reads so far (a fork may not have exec'd yet); -1 done

    def _wall(self, starttime: str) -> float:
        return self.boot_wall + int(starttime) / self.ticks

    def poll(self) -> None:
        now = time.time()
        self._poll_units(now)
        self._poll_processes(now)

    def _poll_units(self, now: float) -> None:
        for node, unit, pid_file in self.units:
            current = self.current.get((node, unit))
            try:
                pid_text, start = pid_file.read_text().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                pid, start = 0, ""
            st = _stat(pid) if pid else None
            alive = st is not None and st[0] not in ("Z", "X") and st[1] == start
            if current and current.died is None and (not alive or current.pid != pid):
                current.died = now
            if alive and (current is None or current.pid != pid):
                instance = Instance(node, unit, pid, self._wall(start))
                self.instances.append(instance)
                self.current[(node, unit)] = instance

    def _is_systemctl(self, argv: list[str]) -> bool:
        return len(argv) >= 3 and argv[1] == self.systemctl

    def _poll_processes(self, now: float) -> None:
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        for pid, (start, call) in list(self._tracked.items()):
            st = _stat(pid)
            if st is None or st[0] in ("Z", "X") or st[1] != start:
                call.ended = now
                del self._tracked[pid]
            elif (argv := _argv(pid)) and not self._is_systemctl(argv):
                # a child systemctl forked to exec a daemon, first seen before its exec: not a systemctl call
                self.calls.remove(call)
                del self._tracked[pid]
        for pid in [p for p in self._seen if p not in pids]:
            del self._seen[pid]
        found: dict[int, tuple[list[str], tuple[str, str, str]]] = {}
        for pid in pids:
            reads = self._seen.get(pid, 0)
            if reads < 0 or reads >= 4 or pid in self._tracked:
                continue
            argv = _argv(pid)
            st = _stat(pid)
            if not self._is_systemctl(argv) or st is None:
                self._seen[pid] = reads + 1
                continue
            self._seen[pid] = -1
            found[pid] = (argv, st)
        for pid, (argv, (_, start, ppid)) in found.items():
            if int(ppid) in found or int(ppid) in self._tracked:
                continue  # forked by a systemctl process (the daemon it starts, before its exec)
            args = argv[2:]
            action = next((a for a in args if not a.startswith("-")), "")
            if action not in ("start", "stop", "restart"):
                continue
            try:
                node = self.netns_node.get(os.readlink(f"/proc/{pid}/ns/net"), "?")
            except OSError:
                node = "?"
            units = [a.removesuffix(".service") for a in args[args.index(action) + 1:] if not a.startswith("-")]
            call = SystemctlCall(node, action, units, self._wall(start))
            self.calls.append(call)
            self._tracked[pid] = (start, call)


def main() -> None:
    config = json.loads(sys.stdin.readline())
    watcher = DaemonWatcher(config["systemctl"], config["units"], config["netns"])
    interval = float(config.get("interval", 0.02))
    watcher.poll()
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], interval)
        if readable:
            line = sys.stdin.readline()
            if not line or line.strip() == "stop":
                break
        watcher.poll()
    watcher.poll()
    print(json.dumps({"instances": [asdict(i) for i in watcher.instances],
                      "calls": [asdict(c) for c in watcher.calls]}), flush=True)


if __name__ == "__main__":
    main()
