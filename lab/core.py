"""The lab: N ParallelCluster-shaped Slurm clusters with real daemons, one network namespace per node."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from . import config, roots, system
from .system import LabError

DEFAULT_BASE = Path("/var/tmp/slurm-multicluster-lab")
REPO = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
CLUSTER_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
# Two runs on one machine (two checkouts' `make test`, a bench beside the tests) must never share a lab: a lab
# of the same name is torn down by `up`. Test and bench labs are named `<base>-<run id>`; the run id is chosen
# once per process tree and inherited through the environment, with the process whose exit orphans the labs.
RUN_ID_ENV = "LAB_RUN_ID"
OWNER_ENV = "LAB_OWNER"  # "<pid>:<start time>" of that process
RUN_ID_RE = re.compile(r"^[a-z0-9]{1,8}$")
MAX_NODES_PER_CLUSTER = 9  # head at .<10k+1>, computes then login nodes up to .<10k+9>
# Every command `exec` runs on a node passes this gate once inside the node's namespaces: `down` removes the
# node's /run/lab/up first, so a command entering while down kills is either seen by its kill loop (it entered
# before the removal) or refuses to start (exit 125): nothing slips in behind the last pass.
GATE_FILE = "up"
EXEC_GATE = f'[ -e /run/lab/{GATE_FILE} ] || {{ echo "lab node is going down" >&2; exit 125; }}; exec "$@"'

# Per-node directories bind-mounted over the host path: (dir name, mount point, owner, mode).
NODE_DIRS = [
    ("run", "/run", "root:root", 0o755),
    ("etc-munge", "/etc/munge", "munge:munge", 0o700),
    ("var-lib-munge", "/var/lib/munge", "munge:munge", 0o711),
    ("var-log-munge", "/var/log/munge", "munge:munge", 0o700),
    ("var-log-slurm", "/var/log/slurm", "slurm:slurm", 0o755),
    ("var-spool-slurmd", "/var/spool/slurmd", "root:root", 0o755),
    ("var-spool-slurm.state", "/var/spool/slurm.state", "slurm:slurm", 0o755),
    ("var-lib-slurm", "/var/lib/slurm", "slurm:slurm", 0o755),
    ("var-lib-mysql", "/var/lib/mysql", "mysql:mysql", 0o755),
    ("var-log-mysql", "/var/log/mysql", "mysql:adm", 0o2750),
    ("var-lib-slurm-multicluster", "/var/lib/slurm-multicluster", "root:root", 0o700),
    ("tmp", "/tmp", "root:root", 0o1777),
]


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster: a head node plus `computes` booted and `spare_computes` defined-but-stopped compute nodes,
    and `logins` login nodes (munged only, as ParallelCluster 3.7+ builds them). `accounting=True` gives its
    head MariaDB + slurmdbd (a cluster created with a Database). `slurm` is the Slurm release every node of the
    cluster runs (lab/roots.py: 22.05 host, 24.11, 26.05); empty means $LAB_SLURM, else 24.11."""

    name: str
    accounting: bool = False
    computes: int = 1
    spare_computes: int = 0
    slurm: str = ""
    logins: int = 0


@dataclass(frozen=True)
class Node:
    """A lab node. `spare` compute nodes exist (namespace, slurm.conf entry) but start only on `boot`."""

    name: str
    cluster: str
    role: str  # "head" | "compute" | "login"
    ip: str
    hostname: str
    spare: bool = False


def _owner(spec: str, root: Path | None = None) -> tuple[int, int]:
    """uid, gid of 'user:group' on the host, or inside a Debian root (munge and mysql ids differ by release)."""
    user, group = spec.split(":")
    if root is None:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid

    def lookup(table: str, name: str) -> int:
        for line in (root / "etc" / table).read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        raise LabError(f"no {name!r} in {root}/etc/{table}")

    return lookup("passwd", user), lookup("group", group)


def _write(path: Path, text: str | bytes, owner: str = "root:root", mode: int = 0o644, ids: Path | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.chown(tmp, *_owner(owner, ids))
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _mkdir(path: Path, owner: str, mode: int, ids: Path | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *_owner(owner, ids))
    os.chmod(path, mode)


def _iface_tag(name: str) -> str:
    """<= 9 characters derived from the lab name, so '<tag>-<octet>p' fits the 15-character limit."""
    if len(name) <= 9:
        return name
    return name[:4] + hashlib.sha1(name.encode()).hexdigest()[:5]


def run_id() -> str:
    """This run's lab-name suffix: $LAB_RUN_ID, or a new random one set there (with this process as the owner
    whose exit makes the run's labs orphans, see remove_orphans) for every child to inherit."""
    rid = os.environ.get(RUN_ID_ENV)
    if not rid:
        rid = secrets.token_hex(3)
        os.environ[RUN_ID_ENV] = rid
        os.environ[OWNER_ENV] = f"{os.getpid()}:{system.proc_stat(os.getpid())[1]}"
    if not RUN_ID_RE.match(rid):
        raise LabError(f"{RUN_ID_ENV}={rid!r} must match {RUN_ID_RE.pattern}")
    return rid


def scoped_name(base: str) -> str:
    """`base` made this run's own (`<base>-<run id>`): no other run on the machine uses, or tears down, that lab."""
    return f"{base}-{run_id()}"


def _owner_alive(owner: str) -> bool:
    pid, _, start = owner.partition(":")
    return pid.isdigit() and system.alive(int(pid), start or None)


def remove_orphans(base: Path = DEFAULT_BASE, progress: Callable[[str], None] | None = None) -> list[str]:
    """Tear down, and delete the files of, every lab under `base` whose owner process has exited (a run that was
    killed before its labs went down); labs without an owner (`python -m lab up`) and live runs' labs are left
    alone. Returns the names removed."""
    removed = []
    for state_file in sorted(base.glob("*/state.json")):
        try:
            state = json.loads(state_file.read_text())
            name, owner = state["name"], state.get("owner")
        except (OSError, ValueError, KeyError):
            continue
        if not owner or _owner_alive(owner):
            continue
        orphan = Lab.load(name, root=state_file.parent)
        orphan.down()
        shutil.rmtree(orphan.root)
        removed.append(name)
        if progress:
            progress(f"removed lab {name!r}, left by run {owner} that has exited")
    return removed


class Lab:
    """N ParallelCluster-shaped Slurm clusters on this machine; see lab/README.md."""

    def __init__(self, name: str = "lab", subnet: str = "10.250.0.0/24",
                 clusters: Iterable[ClusterSpec] | None = None, root: str | os.PathLike | None = None):
        if not NAME_RE.match(name):
            raise LabError(f"lab name {name!r} must match {NAME_RE.pattern}")
        net = ipaddress.ip_network(subnet, strict=True)
        if net.version != 4 or net.prefixlen != 24:
            raise LabError(f"subnet {subnet} must be an IPv4 /24")
        if not net.is_private:
            raise LabError(f"subnet {subnet} must be private")
        specs = list(clusters) if clusters is not None else [ClusterSpec("alpha", accounting=True), ClusterSpec("beta")]
        default_release = os.environ.get("LAB_SLURM") or roots.DEFAULT_RELEASE
        specs = [c if c.slurm else replace(c, slurm=default_release) for c in specs]
        if not specs:
            raise LabError("a lab needs at least one cluster")
        if len({c.name for c in specs}) != len(specs):
            raise LabError("cluster names must be unique")
        if len(specs) > 24:
            raise LabError("at most 24 clusters per lab")
        for c in specs:
            if not CLUSTER_RE.match(c.name):
                raise LabError(f"cluster name {c.name!r} must match {CLUSTER_RE.pattern}")
            if min(c.computes, c.spare_computes, c.logins) < 0 or \
                    c.computes + c.spare_computes + c.logins > MAX_NODES_PER_CLUSTER - 1:
                raise LabError(f"cluster {c.name}: computes + spare_computes + logins must be "
                               f"0..{MAX_NODES_PER_CLUSTER - 1}")
            roots.suite_of(c.slurm)  # a release the lab can run
        self.name = name
        self.subnet = str(net)
        self.clusters = specs
        env_root = os.environ.get("LAB_ROOT")
        self.root = Path(root) if root is not None else Path(env_root) if env_root else DEFAULT_BASE / name
        hidden = [t for _, t, _, _ in NODE_DIRS if self.root.resolve().is_relative_to(t)]
        if hidden:
            raise LabError(f"lab root {self.root} must not be under {hidden[0]}: each node mounts its own {hidden[0]}")
        self.bridge_ns = f"{name}-br"
        self.bridge_ip = str(net.network_address + 1)
        self.prefixlen = net.prefixlen
        self.tag = _iface_tag(name)
        self.bin_dir = self.root / "bin"
        self.node_path = f"{self.bin_dir}:/opt/slurm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.nodes: list[Node] = []
        for i, c in enumerate(specs):
            base = net.network_address + 10 * (i + 1) + 1
            self.nodes.append(Node(f"{c.name}-head", c.name, "head", str(base), f"{c.name}-head"))
            for j in range(1, c.computes + c.spare_computes + 1):
                n = f"{c.name}-compute-{j}"
                self.nodes.append(Node(n, c.name, "compute", str(base + j), n, spare=j > c.computes))
            for j in range(1, c.logins + 1):
                n = f"{c.name}-login-{j}"
                self.nodes.append(Node(n, c.name, "login", str(base + c.computes + c.spare_computes + j), n))
        self._by_name = {n.name: n for n in self.nodes}
        self._holders: dict[str, tuple[int, str]] = {}
        self._booted: set[str] = set()
        self._status = "new"
        # a run's own lab is an orphan once that run has exited (remove_orphans); any other lab has no owner
        self.owner = os.environ.get(OWNER_ENV) if name.endswith(f"-{os.environ.get(RUN_ID_ENV)}") else None

    # ---------------------------------------------------------------- lookups

    def node(self, name: str) -> Node:
        """The node called `name` (e.g. 'beta-head'); LabError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LabError(f"no node {name!r} in lab {self.name!r} (have: {', '.join(self._by_name)})") from None

    def head(self, cluster: str) -> Node:
        """The head node of a cluster."""
        return self.node(f"{cluster}-head")

    def computes(self, cluster: str) -> list[Node]:
        """All compute nodes of a cluster, spare ones included, in order."""
        return [n for n in self.nodes if n.cluster == cluster and n.role == "compute"]

    def logins(self, cluster: str) -> list[Node]:
        """The login nodes of a cluster, in order."""
        return [n for n in self.nodes if n.cluster == cluster and n.role == "login"]

    def slurm_root(self, cluster: str) -> Path | None:
        """The cached Debian root a cluster's nodes run in (None: the host's own Slurm 22.05)."""
        suite = roots.suite_of(self.spec(cluster).slurm)
        return None if suite == roots.HOST else roots.root_path(suite)

    def spec(self, cluster: str) -> ClusterSpec:
        for c in self.clusters:
            if c.name == cluster:
                return c
        raise LabError(f"no cluster {cluster!r} in lab {self.name!r}")

    def netns(self, node: str) -> str:
        """Name of a node's network namespace ('bridge' gives the bridge's)."""
        return self.bridge_ns if node == "bridge" else f"{self.name}-{self.node(node).name}"

    def netns_path(self, node: str) -> str:
        """/run/netns path of a node's network namespace, or of the bridge's with node='bridge'."""
        return str(system.NETNS_DIR / self.netns(node))

    def veth(self, node: str) -> str:
        """Bridge-side veth name of a node (the node side is eth0)."""
        return f"{self.tag}-{self.node(node).ip.rsplit('.', 1)[1]}"

    def is_booted(self, node: str) -> bool:
        """Whether the node's daemons were started (spare computes are not, until `boot`)."""
        return node in self._booted

    # ---------------------------------------------------------------- state

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def _save(self, status: str) -> None:
        state = {
            "version": 1, "name": self.name, "subnet": self.subnet, "root": str(self.root), "status": status,
            "owner": self.owner,
            "bridge_ns": self.bridge_ns, "bridge_ip": self.bridge_ip,
            "clusters": [asdict(c) for c in self.clusters],
            "nodes": [dict(asdict(n), netns=self.netns(n.name), veth=self.veth(n.name),
                           holder_pid=self._holders.get(n.name, (None, None))[0],
                           holder_start=self._holders.get(n.name, (None, None))[1],
                           booted=n.name in self._booted) for n in self.nodes],
        }
        _write(self.state_file, json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, name: str = "lab", root: str | os.PathLike | None = None) -> "Lab":
        """The lab recorded in the state file (as written by `up` in any process)."""
        env_root = os.environ.get("LAB_ROOT")
        base = Path(root) if root is not None else Path(env_root) if env_root else DEFAULT_BASE / name
        try:
            state = json.loads((base / "state.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab {name!r}: {base / 'state.json'} does not exist (run `python -m lab up`)") from None
        if state["name"] != name:
            raise LabError(f"{base / 'state.json'} belongs to lab {state['name']!r}, not {name!r}")
        lab = cls(name, state["subnet"], [ClusterSpec(**c) for c in state["clusters"]], root=base)
        for n in state["nodes"]:
            if n.get("holder_pid"):
                lab._holders[n["name"]] = (n["holder_pid"], n["holder_start"])
            if n.get("booted"):
                lab._booted.add(n["name"])
        lab._status = state["status"]
        lab.owner = state.get("owner")
        return lab

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- running commands

    def holder_pid(self, node: str) -> int:
        """Pid of the process holding the node's namespaces; LabError if the node is not running."""
        n = self.node(node)
        pid, start = self._holders.get(n.name, (None, None))
        if pid is None or not system.alive(pid, start):
            raise LabError(f"node {n.name} of lab {self.name!r} is not running (run `python -m lab up --name {self.name}`)")
        return pid

    def exec(self, node: str, argv: list[str], *, env: dict | None = None, input: str | bytes | None = None,
             timeout: float | None = 60, cwd: str = "/", check: bool = False, capture: bool = True,
             cancel: threading.Event | None = None) -> subprocess.CompletedProcess:
        """Run argv on a node (its network, hostname and mounts) as root and return the completed process
        (text; bytes input is passed through losslessly). The environment is a clean login-like one
        (PATH with the lab's systemctl first) updated with `env`. capture=False lets output through.
        Once `cancel` is set, the command's whole process group is killed (SIGKILL), as the SSM agent kills a
        cancelled command: daemons it started under setsid live on, as they do under systemd."""
        pid = self.holder_pid(node)
        full_env = {"PATH": self.node_path, "HOME": "/root", "USER": "root", "LOGNAME": "root",
                    "SHELL": "/bin/sh", "LANG": "C.UTF-8"}
        full_env.update(env or {})
        if isinstance(input, bytes):
            input = input.decode("utf-8", "surrogateescape")
        cmd = ["nsenter", "-t", str(pid), "-n", "-u", "-m", f"--wdns={cwd}", "--", "/bin/sh", "-c", EXEC_GATE,
               argv[0], *argv]
        if cancel is not None:
            cp = self._exec_cancellable(argv, cmd, full_env, input, timeout, cancel)
        else:
            cp = subprocess.run(cmd, env=full_env, input=input, capture_output=capture, text=True, encoding="utf-8",
                                errors="surrogateescape", timeout=timeout,
                                stdin=None if input is not None or not capture else subprocess.DEVNULL)
        cp.args = argv
        if check and cp.returncode != 0:
            raise LabError(f"{node}: {' '.join(argv)} exited {cp.returncode}: {(cp.stderr or '').strip()}")
        return cp

    @staticmethod
    def _exec_cancellable(argv: list[str], cmd: list[str], env: dict, input: str | None,
                          timeout: float | None, cancel: threading.Event) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                errors="surrogateescape", start_new_session=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending_input = input
        while True:
            try:
                stdout, stderr = proc.communicate(pending_input, timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pending_input = None  # communicate() already sent it
                if cancel.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    stdout, stderr = proc.communicate()
                    if not cancel.is_set():
                        raise subprocess.TimeoutExpired(argv, timeout or 0, stdout, stderr) from None
                    break
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    def sh(self, node: str, script: str, **kw) -> subprocess.CompletedProcess:
        """Run `sh -c script` on a node, as SSM Run Command runs a command text. Same keywords as exec."""
        return self.exec(node, ["sh", "-c", script], **kw)

    def _poll(self, what: str, check: Callable[[], str | None], timeout: float, interval: float = 0.1) -> str:
        """Call check until it returns a non-None observation; LabError with the last one at the deadline."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                seen = check()
            except subprocess.TimeoutExpired as e:
                seen, last = None, f"timed out: {e}"
            if seen is not None:
                return seen
            if time.monotonic() >= deadline:
                raise LabError(f"{what}: not reached within {timeout:.0f}s ({last or 'nothing seen'})")
            time.sleep(interval)

    # ---------------------------------------------------------------- daemons

    def systemctl(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the node's stand-in systemctl."""
        return self.exec(node, ["systemctl", *args], check=check)

    def wait_slurmctld(self, cluster: str, timeout: float = 30) -> str:
        """Poll `scontrol ping` on the cluster's head until its slurmctld answers."""
        head = self.head(cluster).name

        def check():
            cp = self.exec(head, ["scontrol", "ping"], timeout=15)
            return cp.stdout.strip() if "is UP" in cp.stdout else None

        return self._poll(f"slurmctld of {cluster} answering", check, timeout)

    def node_states(self, cluster: str) -> dict[str, str]:
        """{node: state} as `sinfo -N` on the cluster's head reports it (e.g. 'idle', 'down*', 'unknown*')."""
        cp = self.exec(self.head(cluster).name, ["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15)
        states = {}
        for line in cp.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def wait_idle(self, nodes: list[str], timeout: float = 60) -> str:
        """Poll sinfo until every listed compute node is idle; returns what sinfo showed."""
        by_cluster: dict[str, list[str]] = {}
        for n in nodes:
            by_cluster.setdefault(self.node(n).cluster, []).append(n)
        last = {}

        def check():
            for cluster, names in by_cluster.items():
                states = self.node_states(cluster)
                last.update({n: states.get(n, "missing") for n in names})
            if all(last[n] == "idle" for n in nodes):
                return ", ".join(f"{n}=idle" for n in nodes)
            return None

        try:
            return self._poll("compute nodes idle", check, timeout, interval=0.2)
        except LabError as e:
            raise LabError(f"{e}; last sinfo: {last}") from None

    def _boot_compute(self, node: Node) -> None:
        # what a ParallelCluster compute (login) node does at boot: take the head node's shared key copy
        shared = config.LOGIN_SHARED_KEY if node.role == "login" else config.SHARED_KEY
        units = " ".join(config.boot_order(node.role, False))
        self.sh(node.name, f"set -e\ninstall -o munge -g munge -m 0400 {shared} {config.MUNGE_KEY}\n"
                           f"for u in {units}; do\n"
                           "  if systemctl -q is-enabled $u; then systemctl start $u; fi\n"
                           "done\n", check=True)

    def _boot_head(self, node: Node) -> None:
        for unit in config.boot_order("head", self.spec(node.cluster).accounting):
            if self.exec(node.name, ["systemctl", "-q", "is-enabled", unit]).returncode != 0:
                continue
            self.systemctl(node.name, "start", unit)
            if unit == "slurmdbd":
                # slurmdbd is Type=simple: without this, slurmctld's first registration is refused and
                # its ControlHost stays empty in accounting until a retry seconds later
                probe = f"exec 3<>/dev/tcp/127.0.0.1/{config.DBD_PORT}"
                self._poll(f"slurmdbd on {node.name} listening",
                           lambda: "up" if self.exec(node.name, ["bash", "-c", probe]).returncode == 0 else None, 30)

    def boot(self, node: str, *, wait: bool = True, timeout: float = 60) -> str:
        """Start a node as at boot. A compute node copies the shared munge key to /etc/munge/munge.key, then
        starts munged and slurmd; with wait, returns once sinfo shows it idle. A login node copies the key from
        the login nodes' shared dir and starts munged. A head node starts its enabled units in order (slurmctld
        once slurmdbd listens); with wait, returns once slurmctld answers."""
        n = self.node(node)
        self._boot_head(n) if n.role == "head" else self._boot_compute(n)
        with self._locked():
            self._booted.add(n.name)
            self._save(self._status)
        if not wait:
            return "started"
        if n.role == "compute":
            return self.wait_idle([n.name], timeout)
        if n.role == "login":
            return self._poll(f"munged on {n.name}", lambda: "munged answers" if self.exec(
                n.name, ["sh", "-c", "munge -n | unmunge >/dev/null"]).returncode == 0 else None, timeout)
        return self.wait_slurmctld(n.cluster, timeout)

    def reboot(self, node: str, *, wait: bool = True, timeout: float = 60) -> str:
        """Stop every unit of the node (reverse boot order), then `boot` it."""
        n = self.node(node)
        order = config.boot_order(n.role, self.spec(n.cluster).accounting)
        self.systemctl(n.name, "stop", *reversed(order))
        return self.boot(node, wait=wait, timeout=timeout)

    # ---------------------------------------------------------------- up / down

    def __enter__(self) -> "Lab":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, progress: Callable[[str], None] | None = None) -> None:
        """Bring the lab up from nothing (after removing whatever a previous lab of this name left),
        returning when every booted compute node is idle. progress gets one line per step."""
        t0 = time.monotonic()

        def say(step: str, detail: str) -> None:
            if progress:
                progress(f"[{time.monotonic() - t0:5.1f}s] {step}: {detail}")

        with self._locked():
            removed = self._teardown()
            if removed:
                say("cleanup", f"removed a previous lab {self.name!r}: {removed}")
            self._status = "starting"
            try:
                for release in sorted({c.slurm for c in self.clusters}):
                    root = roots.ensure(release, progress=lambda line: say("root", line))
                    if root:
                        say("root", f"Slurm {release}: {root} ({', '.join(f'{k} {v}' for k, v in roots.describe(root).items() if k in ('slurm', 'munge', 'mariadb'))})")
                self._prepare_files()
                self._save("starting")
                say("files", f"configs, keys and per-node dirs under {self.root}")
                self._create_network()
                say("network", f"bridge {self.bridge_ip} in netns {self.bridge_ns}, "
                               f"{len(self.nodes)} nodes on {self.subnet}")
                for n in self.nodes:
                    self._holders[n.name] = system.start_holder(
                        self.netns(n.name), f"lab-holder:{self.name}:{n.name}", n.hostname, self._binds(n),
                        self._overlay(n))
                self._save("starting")
                say("nodes", ", ".join(f"{n.name}={n.ip}" for n in self.nodes))
                self._start_daemons(say)
            except BaseException:
                self._save("failed")
                raise
            self._status = "up"
            self._save("up")
        say("up", f"lab {self.name!r} ready in {time.monotonic() - t0:.1f}s")

    def down(self, progress: Callable[[str], None] | None = None) -> None:
        """Kill everything running in the lab's nodes, delete its namespaces (and so its veths and mounts).
        Files stay under root (logs) until the next `up`. Safe to call on a lab that is not up."""
        t0 = time.monotonic()
        with self._locked():
            removed = self._teardown()
            self._holders.clear()
            self._booted.clear()
            self._status = "down"
            if self.state_file.exists():
                self._save("down")
        if progress:
            progress(f"[{time.monotonic() - t0:5.1f}s] down: {removed or 'nothing was running'}")

    def _known_node_names(self) -> list[str]:
        """Node names of this spec and of whatever the state file recorded (a previous, different spec)."""
        names = [n.name for n in self.nodes]
        try:
            state = json.loads(self.state_file.read_text())
            if state.get("name") == self.name:
                for n in state["nodes"]:
                    if n["name"] not in names:
                        names.append(n["name"])
                    if n.get("holder_pid") and n["name"] not in self._holders:
                        self._holders[n["name"]] = (n["holder_pid"], n["holder_start"])
        except (OSError, ValueError, KeyError):
            pass
        return names

    def _teardown(self) -> str:
        names = self._known_node_names()
        for n in names:  # from now on no lab command starts on a node (see EXEC_GATE)
            (self._node_dir(n) / "run" / "lab" / GATE_FILE).unlink(missing_ok=True)
        every = system.all_holders()
        holders = {(pid, st[1]) for pid, (lab, _) in every.items() if lab == self.name and (st := system.proc_stat(pid))}
        holders |= {(pid, start) for pid, start in self._holders.values() if system.alive(pid, start)}
        # '<lab>-<node>' can also name another lab's node ('a' + cluster 'b-x' vs 'a-b' + cluster 'x'):
        # never touch a namespace that a live holder of another lab is in
        foreign = {system.ns_link(pid, "net") for pid, (lab, _) in every.items() if lab != self.name} - {None}
        netns = [ns for ns in (f"{self.name}-{n}" for n in names)
                 if system.netns_exists(ns) and system.netns_id(ns) not in foreign]
        with system.pinned_namespaces(netns, sorted(holders)) as ns_ids:
            killed = system.kill_all(ns_ids)
        # the bridge namespace runs no lab process (a process that joined it, e.g. moto, is the caller's)
        netns += [self.bridge_ns] if system.netns_exists(self.bridge_ns) else []
        for ns in netns:
            system.delete_netns(ns)
        self._holders.clear()
        parts = []
        if killed:
            parts.append(f"{killed} processes killed")
        if netns:
            parts.append(f"{len(netns)} namespaces deleted")
        return ", ".join(parts)

    # ---------------------------------------------------------------- building blocks of up

    def _node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def _cluster_dir(self, cluster: str) -> Path:
        return self.root / "clusters" / cluster

    def _overlay(self, n: Node) -> tuple[str, str, str, str] | None:
        """(lower, upper, work, mount point) for a node of a cluster running in a Debian root, else None."""
        root = self.slurm_root(n.cluster)
        if root is None:
            return None
        d = self._node_dir(n.name) / "rootfs"
        return str(root), str(d / "upper"), str(d / "work"), str(d / "merged")

    def _binds(self, n: Node) -> list[tuple[str, str]]:
        d = self._node_dir(n.name)
        c = self._cluster_dir(n.cluster)
        binds = [(str(d / sub), target) for sub, target, _, _ in NODE_DIRS]
        binds += [(str(c / "etc"), config.SLURM_ETC), (str(c / "etc"), "/etc/slurm"), (str(self.root / "hosts"), "/etc/hosts")]
        if n.role != "login":
            binds.append((str(c / "shared"), config.SHARED_DIR))
        if n.role != "compute":  # the head node exports it to its login nodes
            binds.append((str(c / "shared_login_nodes"), config.LOGIN_SHARED_DIR))
        venv = (REPO / ".venv").resolve()
        if self.slurm_root(n.cluster) is not None:
            # Inside a Debian root the host's paths are gone: put back the lab root (bin/, logs), the venv
            # holding the `aws` CLI and the python it runs on (its shared libraries come from the root).
            python_home = Path(os.path.realpath(venv / "bin" / "python")).parents[1]
            if python_home == Path("/usr"):
                raise LabError(f"the venv {venv} runs on the system python ({python_home}); nodes in a Debian root "
                               "need a self-contained python (pyenv) for the aws CLI: recreate .venv with it")
            return binds + [(str(self.root), str(self.root)), (str(venv), str(venv)), (str(python_home), str(python_home))]
        if any(venv.is_relative_to(target) for _, target, _, _ in NODE_DIRS):
            # The checkout (and so the venv holding the `aws` CLI) is under a directory each node replaces,
            # e.g. /tmp: keep a handle on it before the node's own /tmp is mounted, then put it back in place.
            stash = str(self.root / "host-venv")
            binds = [(str(venv), stash), *binds, (stash, str(venv))]
        return binds

    def _prepare_files(self) -> None:
        for sub in ("nodes", "clusters", "bin"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        _mkdir(self.root, "root:root", 0o755)
        (self.root / "host-venv").mkdir(exist_ok=True)  # mount point for the venv when nodes hide its path
        # mount points on the host (empty directories; never removed: another lab may be using them)
        for _, target, _, _ in NODE_DIRS:
            Path(target).mkdir(parents=True, exist_ok=True)
        for target in (config.SLURM_ETC, "/etc/slurm", config.SHARED_DIR, config.LOGIN_SHARED_DIR):
            Path(target).mkdir(parents=True, exist_ok=True)

        self._write_bin()
        _write(self.root / "hosts", config.hosts_file([(n.hostname, n.ip) for n in self.nodes]))
        for c in self.clusters:
            cdir = self._cluster_dir(c.name)
            head = self.head(c.name)
            ids = self.slurm_root(c.name)  # users and groups of the cluster's Debian root (None: the host's)
            etc = cdir / "etc"
            _mkdir(etc, "root:root", 0o755)
            computes = [n.name for n in self.computes(c.name)]
            _write(etc / "slurm.conf", config.slurm_conf(c.name, computes))
            _write(etc / "slurm_parallelcluster.conf",
                   config.slurm_parallelcluster_conf(c.name, head.hostname, head.ip, c.accounting))
            _write(etc / "pcluster" / "custom_slurm_settings_include_file_slurm.conf",
                   "# CustomSlurmSettings of the cluster configuration go here (none in the lab)\n")
            if c.accounting:
                _write(etc / "slurmdbd.conf", config.slurmdbd_conf(head.hostname, secrets.token_hex(16)),
                       "slurm:slurm", 0o600, ids)
            # each cluster starts with its own key, as after `pcluster create-cluster`
            key = secrets.token_bytes(1024)
            for shared in ("shared", "shared_login_nodes"):
                _mkdir(cdir / shared, "root:root", 0o755)
                _mkdir(cdir / shared / ".munge", "munge:munge", 0o700, ids)
                _write(cdir / shared / ".munge" / ".munge.key", key, "munge:munge", 0o400, ids)
            for n in [head] + self.computes(c.name) + self.logins(c.name):
                ndir = self._node_dir(n.name)
                for sub, _, owner, mode in NODE_DIRS:
                    _mkdir(ndir / sub, owner, mode, ids)
                _mkdir(ndir / "run" / "lab", "root:root", 0o755)
                _write(ndir / "run" / "lab" / "units.json",
                       json.dumps({"node": n.name, "units": config.units(n.role, c.accounting)}, indent=2))
                _write(ndir / "run" / "lab" / GATE_FILE, "")
                if n.role == "head":
                    _write(ndir / "etc-munge" / "munge.key", key, "munge:munge", 0o400, ids)

    def _write_bin(self) -> None:
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        src = (Path(__file__).parent / "nodectl.py").read_text()
        _write(self.bin_dir / "systemctl", f"#!{python}\n{src}", mode=0o755)
        aws = (REPO / ".venv").resolve() / "bin" / "aws"  # the path _binds mounts (.venv may be a symlink)
        _write(self.bin_dir / "aws", f"#!/bin/sh\nexec '{aws}' \"$@\"\n", mode=0o755)

    def _create_network(self) -> None:
        system.add_bridge(self.bridge_ns, self.bridge_ip, self.prefixlen)
        for n in self.nodes:
            system.add_node_netns(self.netns(n.name), self.bridge_ns, self.veth(n.name), n.ip, self.prefixlen)

    def _start_daemons(self, say: Callable[[str, str], None]) -> None:
        heads = [self.head(c.name) for c in self.clusters]
        booted = [n for n in self.nodes if n.role == "compute" and not n.spare]
        login = [n for n in self.nodes if n.role == "login"]
        acct = [self.head(c.name) for c in self.clusters if c.accounting]

        def munge(n: Node) -> None:
            if n.role != "head":
                shared = config.LOGIN_SHARED_KEY if n.role == "login" else config.SHARED_KEY
                self.sh(n.name, f"install -o munge -g munge -m 0400 {shared} {config.MUNGE_KEY}", check=True)
            self.systemctl(n.name, "start", "munge")

        def mariadb(n: Node) -> None:
            self.exec(n.name, ["mariadb-install-db", "--no-defaults", "--user=mysql", "--datadir=/var/lib/mysql",
                               "--auth-root-authentication-method=socket", "--skip-test-db"], check=True, timeout=120)
            self.systemctl(n.name, "start", "mariadb")
            password = re.search(r"^StoragePass=(.*)$",
                                 (self._cluster_dir(n.cluster) / "etc" / "slurmdbd.conf").read_text(), re.M)[1]
            sql = (f"CREATE DATABASE {config.ACCOUNTING_DB}; "
                   f"CREATE USER 'slurm'@'localhost' IDENTIFIED BY '{password}'; "
                   f"GRANT ALL ON {config.ACCOUNTING_DB}.* TO 'slurm'@'localhost';")
            self.exec(n.name, ["mariadb", "--no-defaults", f"--socket={config.MYSQL_SOCKET}", "-e", sql], check=True)

        # munged on every booted node, MariaDB initialised meanwhile (both only need their own node)
        with ThreadPoolExecutor(max_workers=8) as pool:
            db_jobs = [pool.submit(mariadb, n) for n in acct]
            list(pool.map(munge, heads + booted + login))
            say("munge", f"munged running on {len(heads) + len(booted) + len(login)} nodes, "
                         f"{len(self.clusters)} different keys")
            for j in db_jobs:
                j.result()
        if acct:
            say("mariadb", f"running on {', '.join(n.name for n in acct)} with database {config.ACCOUNTING_DB}")
            for n in acct:
                self.systemctl(n.name, "start", "slurmdbd")

            def dbd_answers(n=None):
                for h in acct:
                    if self.exec(h.name, ["sacctmgr", "-nP", "show", "clusters"], timeout=15).returncode != 0:
                        return None
                return "sacctmgr answers"

            say("slurmdbd", self._poll("slurmdbd answering", dbd_answers, 30, interval=0.2))
        with ThreadPoolExecutor(max_workers=8) as pool:
            for h in heads:
                self.systemctl(h.name, "start", "slurmctld")
            seen = list(pool.map(lambda h: self.wait_slurmctld(h.cluster), heads))
        say("slurmctld", "; ".join(seen))
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: self.systemctl(n.name, "start", "slurmd"), booted))
        self._booted = {n.name for n in heads + booted + login}
        self._save("starting")
        if booted:
            say("slurmd", self.wait_idle([n.name for n in booted], timeout=90))

    # ---------------------------------------------------------------- status

    def status(self) -> dict:
        """Nodes with their ip, holder and unit states, and `sinfo` per cluster (dict, for printing or tests)."""
        nodes = []
        for n in self.nodes:
            entry = {"name": n.name, "cluster": n.cluster, "role": n.role, "ip": n.ip, "spare": n.spare,
                     "booted": n.name in self._booted, "holder": None, "units": {}}
            try:
                entry["holder"] = self.holder_pid(n.name)
            except LabError:
                nodes.append(entry)
                continue
            order = config.boot_order(n.role, self.spec(n.cluster).accounting)
            cp = self.exec(n.name, ["systemctl", "is-active", *order], timeout=15)
            entry["units"] = dict(zip(order, cp.stdout.split()))
            nodes.append(entry)
        sinfo = {}
        for c in self.clusters:
            try:
                cp = self.exec(self.head(c.name).name, ["sinfo", "-N", "-o", "%10P %20N %10T %C"], timeout=15)
                sinfo[c.name] = (cp.stdout + cp.stderr).rstrip()
            except LabError as e:
                sinfo[c.name] = str(e)
        return {"name": self.name, "root": str(self.root), "subnet": self.subnet, "bridge_ip": self.bridge_ip,
                "bridge_ns": self.bridge_ns, "status": self._status, "nodes": nodes,
                "sinfo": sinfo}
