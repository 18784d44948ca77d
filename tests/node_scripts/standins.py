"""Stand-ins for the daemon-facing commands of a ParallelCluster head node, for temp-dir tests of the node scripts.

Installed by the test fixture as small wrappers (`bin/systemctl`, `bin/scontrol`, ...) that run
``python standins.py <command> ARGS``. All state lives in ``$NODE_STATE/node.json``; every invocation is
appended to ``$NODE_STATE/calls.log`` (one JSON list per line) so a test can see what was restarted.

- ``systemctl`` knows the units listed in node.json. It speaks ``systemd_version`` (default 252, Amazon Linux 2023):
  below 230 it rejects ``--value`` as systemd 219 does; ``systemctl_broken`` makes every call fail as without D-Bus. The ``munge`` unit runs a REAL munged (the key file is
  ``$MUNGE_KEY_FILE``, the socket ``$MUNGE_SOCKET``), so munge round trips in the tests are real. Slurm units
  are state only: starting ``slurmctld`` snapshots the accounting settings from the slurm.conf include tree
  (what ``scontrol show config`` then reports), and fails when a unit says so (``fail_restarts``,
  ``fail_if_accounting_host``) the way a slurmctld that dies right after start does (appending
  ``log_on_failure`` = [file, line] to its log, as slurmctld logs its ``fatal:`` line).
- ``scontrol``, ``sacctmgr``, ``sbatch``, ``sinfo``, ``slurmdbd`` answer from node.json in Slurm 22.05's formats.
- ``aws`` records its command line and runs the real aws CLI (which talks to moto).
Anything the stand-ins do not implement exits 2 loudly, so a script relying on more fails its test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["NODE_STATE"])
NODE_FILE = STATE / "node.json"


def load() -> dict:
    return json.loads(NODE_FILE.read_text())


def save(node: dict) -> None:
    tmp = NODE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(node, indent=1))
    tmp.replace(NODE_FILE)


def record(argv: list[str]) -> None:
    with open(STATE / "calls.log", "a") as log:
        log.write(json.dumps(argv) + "\n")


def unsupported(what: str) -> None:
    print(f"stand-in: {what} is not implemented", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- slurm.conf tree


def conf_tree(path: Path, depth: int = 0) -> list[Path]:
    if depth > 8 or not path.is_file():
        return []
    files = [path]
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"^\s*include\s+(\S+)", line, re.IGNORECASE)
        if match:
            target = Path(match[1])
            files += conf_tree(target if target.is_absolute() else path.parent / target, depth + 1)
    return files


def conf_values() -> dict[str, str]:
    """Last definition of each key across the include tree (lower-cased keys)."""
    values: dict[str, str] = {}
    for file in conf_tree(Path(os.environ["SLURM_ETC"]) / "slurm.conf"):
        for line in file.read_text(errors="replace").splitlines():
            match = re.match(r"^\s*([A-Za-z]+)\s*=\s*(\S*)", line)
            if match:
                values[match[1].lower()] = match[2]
    return values


# ---------------------------------------------------------------- munged


def proc_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"  # this sandbox's PID 1 reaps orphans late


def munged_pid() -> int | None:
    try:
        pid = int((STATE / "munged.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if proc_alive(pid) else None


def start_munged() -> bool:
    if munged_pid():
        return True
    socket = Path(os.environ["MUNGE_SOCKET"])
    run_dir = socket.parent
    for stale in (socket, Path(str(socket) + ".lock")):
        stale.unlink(missing_ok=True)
    with open(run_dir / "munged.out", "ab") as out:
        proc = subprocess.Popen(
            [
                "setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
                "/usr/sbin/munged", "-F",
                f"--key-file={os.environ['MUNGE_KEY_FILE']}",
                f"--socket={socket}",
                f"--pid-file={run_dir / 'munged.pidfile'}",
                f"--log-file={run_dir / 'munged.log'}",
                f"--seed-file={run_dir / 'munged.seed'}",
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    (STATE / "munged.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False  # munged refused to start (bad key, bad permissions): a failed unit
        if socket.exists():
            return True
        time.sleep(0.02)
    return False


def stop_munged() -> None:
    pid = munged_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proc_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc_alive(pid):
            os.kill(pid, signal.SIGKILL)
    (STATE / "munged.pid").unlink(missing_ok=True)


# ---------------------------------------------------------------- systemctl


def unit_active(node: dict, name: str) -> str:
    unit = node["units"][name]
    if unit.get("kind") == "munged":
        if munged_pid():
            return "active"
        return "failed" if unit.get("failed") else "inactive"
    return unit["state"]


def start_unit(node: dict, name: str) -> None:
    unit = node["units"][name]
    if unit.get("kind") == "munged":
        unit["failed"] = not start_munged()
        return
    if name == "slurmctld":
        values = conf_values()
        node["live"] = {
            "ClusterName": values.get("clustername", ""),
            "SlurmctldHost": values.get("slurmctldhost", ""),
            "SlurmctldPort": values.get("slurmctldport", "6817"),
            "AccountingStorageType": values.get("accountingstoragetype", "accounting_storage/none"),
            "AccountingStorageHost": values.get("accountingstoragehost", ""),
            "AccountingStoragePort": values.get("accountingstorageport", "0"),
            "SlurmdPort": values.get("slurmdport", "6818"),
            "SrunPortRange": values.get("srunportrange", "0-0"),  # slurmctld's way of saying unset
        }
    failing = unit.get("fail_restarts", 0) > 0
    if failing:
        unit["fail_restarts"] -= 1
    bad_host = unit.get("fail_if_accounting_host")
    if bad_host and node.get("live", {}).get("AccountingStorageHost") == bad_host:
        failing = True
    # like systemd with Type=simple: the start "succeeds", the daemon dies right after
    unit["state"] = "failed" if failing else "active"
    if failing and unit.get("log_on_failure"):  # [log file, line]: what the dying daemon logs
        with open(unit["log_on_failure"][0], "a") as log:
            log.write(unit["log_on_failure"][1] + "\n")


def stop_unit(node: dict, name: str) -> None:
    unit = node["units"][name]
    if unit.get("kind") == "munged":
        stop_munged()
        unit["failed"] = False
        return
    unit["state"] = "inactive"


# systemd 230 added `systemctl show --value`; older ones (219: RHEL 7, Amazon Linux 2) reject the option.
VALUE_OPTION_SINCE = 230


def systemctl(args: list[str]) -> int:
    node = load()
    if "--value" in args and node.get("systemd_version", 252) < VALUE_OPTION_SINCE:
        print("systemctl: unrecognized option '--value'", file=sys.stderr)  # getopt's words, as systemd 219 says
        return 1
    if node.get("systemctl_broken"):  # no D-Bus, no systemd: every query fails
        print("Failed to connect to bus: No such file or directory", file=sys.stderr)
        return 1
    quiet = "--quiet" in args or "-q" in args
    words = [a for a in args if a not in ("--quiet", "-q", "--no-pager")]
    units = node["units"]
    if words[:1] == ["show"]:
        value_only = "--value" in words
        words = [w for w in words if w != "--value"]
        if words[1:3] != ["-p", "LoadState"] or len(words) != 4:
            unsupported("systemctl " + " ".join(args))
        state = "loaded" if words[3].removesuffix(".service") in units else "not-found"
        print(state if value_only else f"LoadState={state}")
        return 0
    if len(words) == 3 and words[0] == "kill" and words[1] == "--signal=SIGKILL":
        words = ["kill", words[2]]
    if len(words) != 2:
        unsupported("systemctl " + " ".join(args))
    verb, name = words
    name = name.removesuffix(".service")
    if name not in units:
        if verb == "is-active":
            if not quiet:
                print("inactive")
            return 4
        print(f"Failed to {verb} {name}.service: Unit {name}.service not found.", file=sys.stderr)
        return 5
    if verb == "is-active":
        state = unit_active(node, name)
        if not quiet:
            print(state)
        return 0 if state == "active" else 3
    if verb == "is-enabled":
        enabled = units[name].get("enabled", True)
        if not quiet:
            print("enabled" if enabled else "disabled")
        return 0 if enabled else 1
    if verb in ("enable", "disable"):
        units[name]["enabled"] = verb == "enable"
    elif verb == "start":
        if units[name].get("hang_on_start"):  # a start job that does not finish (the test kills it: hanging.pid)
            (STATE / "hanging.pid").write_text(str(os.getpid()))
            time.sleep(units[name]["hang_on_start"])
            return 1
        if unit_active(node, name) != "active":
            start_unit(node, name)
    elif verb == "stop":
        stop_unit(node, name)
    elif verb == "restart":
        stop_unit(node, name)
        start_unit(node, name)
    elif verb == "kill":
        stop_unit(node, name)
    else:
        unsupported("systemctl " + verb)
    save(node)
    if verb in ("start", "restart") and unit_active(node, name) != "active" and units[name].get("kind") == "munged":
        print(f"Job for {name}.service failed because the control process exited with error code.", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- Slurm commands


def ctld_up(node: dict) -> bool:
    return "slurmctld" in node["units"] and unit_active(node, "slurmctld") == "active"


def scontrol(args: list[str]) -> int:
    node = load()
    if args in (["--version"], ["-V"]):
        print(f"slurm-wlm {node['slurm_version']}")
        return 0
    if args == ["ping"]:
        host = node.get("live", {}).get("SlurmctldHost", "head").split("(")[0] or "head"
        if ctld_up(node):
            print(f"Slurmctld(primary) at {host} is UP")
            return 0
        print(f"Slurmctld(primary) at {host} is DOWN")
        return 1
    if args == ["show", "config"]:
        if not ctld_up(node):
            print("slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)", file=sys.stderr)
            return 1
        live = node["live"]
        ctld_name = live["SlurmctldHost"].split("(")[0]
        acct_host = live["AccountingStorageHost"] or ctld_name
        lines = [
            "Configuration data as of 2026-01-01T00:00:00",
            "AccountingStorageBackupHost = (null)",
            "AccountingStorageEnforce = none",
            f"AccountingStorageHost   = {acct_host}",
            "AccountingStorageExternalHost = (null)",
            f"AccountingStoragePort   = {live['AccountingStoragePort']}",
            f"AccountingStorageType   = {live['AccountingStorageType']}",
            "AccountingStorageUser   = root",
            f"ClusterName             = {live['ClusterName']}",
            f"SlurmctldHost[0]        = {live['SlurmctldHost']}",
            f"SlurmctldPort           = {live['SlurmctldPort']}",
            f"SlurmdPort              = {live.get('SlurmdPort', '6818')}",
            f"SrunPortRange           = {live.get('SrunPortRange', '0-0')}",
            f"SLURM_VERSION           = {node['slurm_version']}",
        ]
        print("\n".join(lines))
        return 0
    unsupported("scontrol " + " ".join(args))
    return 2


def sacctmgr(args: list[str]) -> int:
    if args != ["-nP", "show", "clusters", "format=cluster,controlhost,controlport"]:
        unsupported("sacctmgr " + " ".join(args))
    node = load()
    node["sacctmgr_calls"] = node.get("sacctmgr_calls", 0) + 1
    save(node)
    for name, cluster in node.get("clusters", {}).items():
        if node["sacctmgr_calls"] > cluster.get("appear_after_calls", 0):
            print(f"{name}|{cluster.get('host', '')}|{cluster.get('port', 0)}")
    return 0


def sbatch(args: list[str]) -> int:
    match = re.fullmatch(r"--clusters=(\S+)", args[0]) if args else None
    if not match or args[1:] != ["--test-only", "--wrap", "true"]:
        unsupported("sbatch " + " ".join(args))
    node = load()
    if match[1] in node.get("submit_ok", []):
        print(f"sbatch: Job 3 to start at 2026-01-01T00:00:00 using 1 processors on nodes c1 in partition q on cluster {match[1]}", file=sys.stderr)
        return 0
    print("sbatch: error: Problem talking to the database: Connection refused", file=sys.stderr)
    return 1


def sinfo(args: list[str]) -> int:
    if args != ["-h", "-N", "-o", "%N %T"]:
        unsupported("sinfo " + " ".join(args))
    for name, state in load().get("nodes", []):
        print(f"{name} {state}")
    return 0


def slurmdbd(args: list[str]) -> int:
    if args != ["-V"]:
        unsupported("slurmdbd " + " ".join(args))
    print(f"slurm-wlm {load()['slurm_version']}")
    return 0


def aws(args: list[str]) -> int:
    """The real aws CLI; the stand-in only records the command line (tests check no key is on it)."""
    real = os.environ["REAL_AWS"]
    os.execv(real, [real, *args])
    return 1


COMMANDS = {
    "aws": aws,
    "systemctl": systemctl,
    "scontrol": scontrol,
    "sacctmgr": sacctmgr,
    "sbatch": sbatch,
    "sinfo": sinfo,
    "slurmdbd": slurmdbd,
}

if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    record([command, *arguments])
    sys.exit(COMMANDS[command](arguments))
