"""Host-side plumbing: network namespaces, veths, holder processes and finding/killing what runs inside."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

NETNS_DIR = Path("/run/netns")

# Runs inside `unshare --uts --mount --propagation private` in the node's netns: the node's whole
# "machine" setup. Prints "ready <pid>" once the mounts are in place, then becomes the long-lived
# holder whose namespaces every command and daemon of the node enters.
HOLDER_SCRIPT = r"""
set -eu
tag=$1 host=$2 rootfs=$3
shift 3
hostname "$host"
prefix=
if [ -n "$rootfs" ]; then
  # A node of another Slurm release: an overlay of the cached Debian root (writes stay in the node's own
  # upper dir), the host's /proc, /sys (cgroups) and /dev, then the binds below, then pivot_root into it.
  lower=$1 upper=$2 work=$3
  shift 3
  mkdir -p "$upper" "$work" "$rootfs"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$rootfs"
  for d in proc sys dev; do mount --rbind "/$d" "$rootfs/$d"; done
  prefix=$rootfs
else
  # Our private copy of the host's mount table holds /run/netns/* bind mounts of every named netns
  # (other labs' too); they would keep those namespaces alive after `ip netns del`. Drop them here.
  umount -l /run/netns 2>/dev/null || true
fi
while [ "$#" -gt 0 ]; do
  # a target may not exist yet inside a node's own dir or root (the venv put back under its /tmp)
  if [ -d "$1" ]; then mkdir -p "$prefix$2"; elif [ ! -e "$prefix$2" ]; then mkdir -p "$(dirname "$prefix$2")"; : >"$prefix$2"; fi
  mount --bind "$1" "$prefix$2"
  shift 2
done
if [ -n "$rootfs" ]; then
  cd "$rootfs"
  mkdir -p .lab-oldroot
  pivot_root . .lab-oldroot
  cd /
  umount -l /.lab-oldroot  # also drops the host's /run/netns mounts
fi
echo "ready $$"
exec -a "$tag" sleep infinity </dev/null >/dev/null 2>&1
"""


class LabError(RuntimeError):
    """A lab operation failed; the message says what was seen."""


def run(argv: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a host command, text output captured; raise with its stderr when it fails and check is set."""
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_id(name: str) -> str | None:
    """'net:[inode]' of a named netns, as /proc/PID/ns/net shows it, or None."""
    try:
        return f"net:[{os.stat(NETNS_DIR / name).st_ino}]"
    except OSError:
        return None


def add_bridge(ns: str, bridge_ip: str, prefixlen: int) -> None:
    """A namespace holding only bridge br0 with the subnet's .1."""
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", ns, "addr", "add", f"{bridge_ip}/{prefixlen}", "dev", "br0"])
    run(["ip", "-n", ns, "link", "set", "br0", "up"])


def add_node_netns(ns: str, bridge_ns: str, veth: str, ip: str, prefixlen: int) -> None:
    """A node namespace joined to the bridge by a veth pair created inside the bridge namespace,
    so the pair's names never exist in the host's namespace (no clash between labs)."""
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", bridge_ns, "link", "add", veth, "type", "veth", "peer", "name", veth + "p", "netns", ns])
    run(["ip", "-n", bridge_ns, "link", "set", veth, "master", "br0", "up"])
    run(["ip", "-n", ns, "link", "set", veth + "p", "name", "eth0"])
    run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def delete_netns(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "del", name], check=False)


def start_holder(ns: str, tag: str, hostname: str, binds: list[tuple[str, str]],
                 overlay: tuple[str, str, str, str] | None = None) -> tuple[int, str]:
    """Start a node's holder process; returns (pid, start time) once its mounts are in place. With overlay
    (lower root, upper dir, work dir, mount point) the node lives inside that root (another Slurm release)."""
    argv = ["setsid", "-f", "nsenter", f"--net={NETNS_DIR / ns}", "--",
            "unshare", "--uts", "--mount", "--propagation", "private", "--",
            "bash", "-c", HOLDER_SCRIPT, "lab-holder", tag, hostname]
    if overlay:
        lower, upper, work, mountpoint = overlay
        argv += [mountpoint, lower, upper, work]
    else:
        argv += [""]
    for src, dst in binds:
        argv += [src, dst]
    # returns at EOF: when the holder has exec'd sleep with its output closed, or died
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    lines = cp.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("ready "):
        raise LabError(f"holder for {hostname} failed: {(cp.stdout + cp.stderr).strip()}")
    pid = int(lines[-1].split()[1])
    st = proc_stat(pid)
    if st is None or not alive(pid):
        raise LabError(f"holder for {hostname} exited right after starting")
    return pid, st[1]


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a process, None if it does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], fields[19]


def alive(pid: int, start: str | None = None) -> bool:
    """True while the process runs (zombies count as dead: the sandbox's PID 1 reaps them late)."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X") and (start is None or st[1] == start)


def ns_link(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def all_holders() -> dict[int, tuple[str, str]]:
    """Every live lab holder on the machine: pid -> (lab name, node name), parsed from the exact argv[0] tag
    'lab-holder:<lab>:<node>' (so lab 'lab' never matches lab 'labtest')."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        parts = argv0.split(":")
        if len(parts) == 3 and parts[0] == "lab-holder" and alive(int(entry.name)):
            found[int(entry.name)] = (parts[1], parts[2])
    return found


@contextmanager
def pinned_namespaces(netns_names: list[str], processes: list[tuple[int, str]]) -> Iterator[set[str]]:
    """Open the named network namespaces and the net + mount namespaces of the given (pid, start time)
    processes; yield their ids ('net:[..]', 'mnt:[..]'). Why: the kernel hands a freed namespace id to the
    very next namespace created anywhere (another lab's holder, any `unshare`), so an id is only safe to
    match while we hold the namespace open."""
    fds: list[tuple[str, int]] = []  # (kind, fd)
    try:
        for name in netns_names:
            try:
                fds.append(("net", os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError:
                pass
        for pid, start in processes:
            for kind in ("net", "mnt"):
                try:
                    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                if alive(pid, start):
                    fds.append((kind, fd))
                else:  # died, or its pid was reused before we opened it: not that process's namespace
                    os.close(fd)
        ids = {f"{kind}:[{os.fstat(fd).st_ino}]" for kind, fd in fds}  # as /proc/PID/ns/<kind> reads
        # never the host's own namespaces (a stray process in them would make kill_all kill the machine)
        yield ids - {ns_link(pid, kind) for pid in (1, os.getpid()) for kind in ("net", "mnt")}
    finally:
        for _, fd in fds:
            os.close(fd)


def in_namespaces(pid: int, ns_ids: set[str]) -> bool:
    return ns_link(pid, "net") in ns_ids or ns_link(pid, "mnt") in ns_ids


def processes_in(ns_ids: set[str]) -> list[int]:
    """Live processes whose network or mount namespace is one of ns_ids ('net:[..]', 'mnt:[..]').
    Only meaningful while those namespaces are held open (see pinned_namespaces)."""
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if in_namespaces(entry.name, ns_ids) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _kill_if_in(pid: int, ns_ids: set[str]) -> bool:
    """SIGKILL pid if it is still in ns_ids, through a pidfd so that a reused pid is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False  # gone already
    try:
        if not in_namespaces(pid, ns_ids):  # checked after opening the pidfd: the pid may have been reused
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def describe(pid: int) -> str:
    """'pid state command' for error messages."""
    st = proc_stat(pid)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid} {st[0] if st else 'gone'} {cmd[:80]}"


def kill_all(ns_ids: set[str], deadline_s: float = 60) -> int:
    """SIGKILL every process living in the given (pinned) namespaces, again and again, until none is left
    alive (zombies count as dead); returns how many were killed. LabError only if some survive the deadline."""
    killed: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while True:
        pids = processes_in(ns_ids) if ns_ids else []
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise LabError(f"processes still alive in the lab namespaces after {deadline_s:.0f}s of SIGKILL: "
                           + "; ".join(describe(p) for p in pids))
        for pid in pids:
            if _kill_if_in(pid, ns_ids):
                killed.add(pid)
        time.sleep(0.05)
