"""Stand-in for `systemctl` on lab nodes (no systemd runs inside the namespaces).

Installed by the lab as `<lab root>/bin/systemctl` (first on every node's PATH). It is a standalone
stdlib-only script: it reads the node's unit table from /run/lab/units.json (each node has its own /run)
and keeps one pid file per unit in /run/lab. Supported, as on a real node:

    systemctl start|stop|restart|is-active|is-enabled|enable|disable UNIT...
    systemctl kill [-s SIG|--signal=SIG] UNIT...
    systemctl show -p PROP [--value] UNIT      (LoadState, ActiveState, SubState, MainPID, UnitFileState)

`-q/--quiet` and `--no-pager` are accepted anywhere. Anything else exits 1 with a message saying the
lab does not implement it, so a script relying on more than this subset fails loudly.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

STATE_DIR = os.environ.get("LAB_SYSTEMCTL_DIR", "/run/lab")
UNITS_FILE = os.path.join(STATE_DIR, "units.json")
DAEMON_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# systemctl exit codes (LSB): 3 = not running, 4 = no such unit, 5 = unit not loaded
EXIT_NOT_RUNNING = 3
EXIT_NO_SUCH_UNIT = 4
EXIT_NOT_LOADED = 5


class Failure(Exception):
    """Ends the command with a message on stderr and an exit code."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def load_units():
    with open(UNITS_FILE) as f:
        return json.load(f)["units"]


def unit_name(arg):
    return arg[: -len(".service")] if arg.endswith(".service") else arg


def pid_file(unit):
    return os.path.join(STATE_DIR, unit + ".pid")


def disabled_marker(unit):
    return os.path.join(STATE_DIR, unit + ".disabled")


def proc_state(pid):
    """(state letter, start time) of a pid, or None when it no longer exists."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def read_main_pid(unit):
    """The unit's recorded main pid and whether that very process is still alive (not a zombie)."""
    try:
        with open(pid_file(unit)) as f:
            pid_text, start = f.read().split()
    except (OSError, ValueError):
        return None, False
    pid = int(pid_text)
    st = proc_state(pid)
    # the sandbox's PID 1 reaps orphans late: a dead daemon lingers as a zombie
    alive = st is not None and st[0] not in ("Z", "X") and st[1] == start
    return pid, alive


def active_state(unit):
    pid, alive = read_main_pid(unit)
    if alive:
        return "active"
    return "failed" if pid is not None else "inactive"


def wait_dead(pid, start, seconds):
    deadline = time.monotonic() + seconds
    while True:
        st = proc_state(pid)
        if st is None or st[0] in ("Z", "X") or st[1] != start:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def socket_ready(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def start(unit, spec):
    if active_state(unit) == "active":
        return
    for path, owner, mode in spec.get("runtime_dirs", []):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, int(mode, 8))
        subprocess.run(["chown", owner, path], check=True)
    for link, target in spec.get("runtime_links", []):
        if not os.path.islink(link):
            os.symlink(target, link)
    log = spec["log"]
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "ab") as out:
        out.write(b"--- lab systemctl: starting %s at %s\n" % (unit.encode(), time.strftime("%F %T").encode()))
        out.flush()
        proc = subprocess.Popen(
            spec["exec"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd="/", env=DAEMON_ENV,
        )
    st = proc_state(proc.pid)
    with open(pid_file(unit), "w") as f:
        f.write("%d %s\n" % (proc.pid, st[1] if st else "0"))
    ready = spec.get("ready_socket")
    if not ready:
        return  # Type=simple: running is enough, as with systemd
    deadline = time.monotonic() + spec.get("start_timeout", 30)
    while not socket_ready(ready):
        if proc.poll() is not None:
            raise Failure(
                "Job for %s.service failed because the control process exited with error code.\n"
                "See %s for details." % (unit, log), 1)
        if time.monotonic() >= deadline:
            raise Failure("Job for %s.service failed because a timeout was exceeded." % unit, 1)
        time.sleep(0.05)


def signal_unit(pid, sig, spec):
    """Send ``sig`` as systemd does: to every process of the unit (KillMode=control-group, the default; here
    the unit's process group, since each unit starts in a session of its own), or to the main process only
    (KillMode=process, slurmd's: its jobs' processes outlive a slurmd restart)."""
    try:
        if spec.get("kill_mode", "control-group") == "process":
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop(unit, spec):
    pid, alive = read_main_pid(unit)
    if alive:
        start_time = proc_state(pid)[1]
        signal_unit(pid, signal.SIGTERM, spec)
        if not wait_dead(pid, start_time, spec.get("stop_timeout", 5)):
            # e.g. a slurmd that never registered ignores SIGTERM
            signal_unit(pid, signal.SIGKILL, spec)
            wait_dead(pid, start_time, 30)
        if spec.get("kill_mode", "control-group") != "process":
            # what is left of the unit (a child such as slurmctld's slurmscriptd) goes too, as with systemd's
            # final SIGKILL; only while the group is known to be this unit's (its main process was alive)
            signal_unit(pid, signal.SIGKILL, spec)
    try:
        os.unlink(pid_file(unit))
    except FileNotFoundError:
        pass


def parse_signal(text):
    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return getattr(signal, name)
    except AttributeError:
        raise Failure("Failed to parse signal string %s." % text, 1)


def show(unit, units, props, value_only):
    known = unit in units
    pid, alive = read_main_pid(unit) if known else (None, False)
    state = active_state(unit) if known else "inactive"
    values = {
        "LoadState": "loaded" if known else "not-found",
        "ActiveState": state,
        "SubState": {"active": "running", "failed": "failed", "inactive": "dead"}[state],
        "MainPID": str(pid if alive else 0),
        "UnitFileState": ("disabled" if os.path.exists(disabled_marker(unit)) else "enabled") if known else "",
    }
    for prop in props or list(values):
        if prop not in values:
            raise Failure("lab systemctl: property %s is not implemented (have: %s)" % (prop, ", ".join(values)), 1)
        print(values[prop] if value_only else "%s=%s" % (prop, values[prop]))


def main(argv):
    quiet = False
    value_only = False
    props = []
    sig = signal.SIGTERM
    words = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-q", "--quiet"):
            quiet = True
        elif a in ("--no-pager", "--no-block", "--no-ask-password"):
            pass
        elif a == "--value":
            value_only = True
        elif a in ("-p", "--property", "-s", "--signal"):
            if i + 1 >= len(argv):
                raise Failure("option %s requires an argument" % a, 1)
            i += 1
            if a in ("-p", "--property"):
                props += argv[i].split(",")
            else:
                sig = parse_signal(argv[i])
        elif a.startswith("--property="):
            props += a.split("=", 1)[1].split(",")
        elif a.startswith("--signal="):
            sig = parse_signal(a.split("=", 1)[1])
        elif a.startswith("-"):
            raise Failure("lab systemctl: option %s is not implemented" % a, 1)
        else:
            words.append(a)
        i += 1
    if not words:
        raise Failure("lab systemctl: a command is required", 1)
    verb, args = words[0], [unit_name(w) for w in words[1:]]
    verbs = ("start", "stop", "restart", "is-active", "is-enabled", "enable", "disable", "kill", "show")
    if verb not in verbs:
        raise Failure("lab systemctl: command %s is not implemented (have: %s)" % (verb, " ".join(verbs)), 1)
    if not args:
        raise Failure("Too few arguments.", 1)
    units = load_units()

    if verb == "show":
        for u in args:
            show(u, units, props, value_only)
        return 0
    if verb == "is-active":
        code = 0
        for u in args:
            state = active_state(u) if u in units else "inactive"
            if not quiet:
                print(state)
            if state != "active":
                code = EXIT_NOT_RUNNING if u in units else EXIT_NO_SUCH_UNIT
        return code
    if verb == "is-enabled":
        code = 0
        for u in args:
            if u not in units:
                raise Failure("Failed to get unit file state for %s.service: No such file or directory" % u, 1)
            state = "disabled" if os.path.exists(disabled_marker(u)) else "enabled"
            if not quiet:
                print(state)
            if state != "enabled":
                code = 1
        return code

    missing = [u for u in args if u not in units]
    if missing:
        if verb in ("enable", "disable"):
            raise Failure("Failed to %s unit: Unit file %s.service does not exist." % (verb, missing[0]), 1)
        what = {"kill": "Failed to kill unit"}.get(verb, "Failed to %s" % verb)
        raise Failure("%s %s.service: Unit %s.service not found." % (what, missing[0], missing[0]), EXIT_NOT_LOADED)
    for u in args:
        if verb == "start":
            start(u, units[u])
        elif verb == "stop":
            stop(u, units[u])
        elif verb == "restart":
            stop(u, units[u])
            start(u, units[u])
        elif verb == "kill":
            pid, alive = read_main_pid(u)
            if alive:
                signal_unit(pid, sig, units[u])
        elif verb == "enable":
            if os.path.exists(disabled_marker(u)):
                os.unlink(disabled_marker(u))
        elif verb == "disable":
            open(disabled_marker(u), "w").close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Failure as e:
        print(e, file=sys.stderr)
        sys.exit(e.code)
