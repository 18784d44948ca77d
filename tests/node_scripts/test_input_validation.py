"""Every node script refuses hostile or malformed input before it touches anything (exit 2, nothing changed)."""

from __future__ import annotations

import pytest

SHA = "a" * 64
HOSTILE = ["x;reboot", "$(id)", "`id`", "a b", "a\nb", "../etc", "", "-x", "--help=1"]

# script, valid arguments, and the flags whose values are checked
CASES = {
    "set-accounting.sh": (
        ["--host", "10.0.0.20", "--port", "6819", "--backup-id", "exec-1"],
        ["--host", "--port", "--backup-id"],
    ),
    "install-munge-key.sh": (
        ["--secret-id", "slurm-multicluster/f1/munge-key", "--region", "us-east-1", "--expect-sha256", SHA,
         "--backup-id", "exec-1", "--version-stage", "AWSCURRENT", "--restart", "slurmctld", "--shared-dirs"],
        ["--secret-id", "--region", "--expect-sha256", "--backup-id", "--version-stage", "--restart"],
    ),
    "upload-munge-key.sh": (
        ["--secret-id", "slurm-multicluster/f1/munge-key", "--region", "us-east-1"],
        ["--secret-id", "--region"],
    ),
    "verify-member.sh": (["--peers", "beta,gamma", "--deadline", "5"], ["--peers", "--deadline"]),
    "munge-credential.sh": (["decode", "--credential", "MUNGE:AwQFAACT+/9=:"], ["--credential"]),
    "restore-backup.sh": (["--backup-id", "exec-1"], ["--backup-id"]),
    "remove-from-accounting.sh": (["--cluster", "beta", "--backup-id", "exec-1"], ["--cluster", "--backup-id"]),
}

PARAMS = [
    pytest.param(script, flag, value, id=f"{script}-{flag}-{value!r}")
    for script, (_, flags) in CASES.items()
    for flag in flags
    for value in HOSTILE
]


def with_value(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def assert_refused(node, result, before) -> None:
    assert result.returncode == 2, result.stderr
    assert result.json["ok"] is False
    assert result.json["changed"] is False
    assert result.json["error"]
    assert "error:" in result.stderr
    assert node.snapshot() == before
    assert node.systemctl_actions() == []
    assert not node.backup_root.exists()
    assert not (node.root / "pwned").exists()


@pytest.mark.parametrize("script,flag,value", PARAMS)
def test_script_refuses_hostile_value_and_changes_nothing(node, script, flag, value):
    before = node.snapshot()
    args = with_value(CASES[script][0], flag, value)
    assert_refused(node, node.run(script, *args), before)


@pytest.mark.parametrize("script", list(CASES))
def test_script_refuses_command_substitution_without_running_it(node, script):
    before = node.snapshot()
    args, flags = CASES[script]
    hostile = f"$(touch {node.root}/pwned)"
    for flag in flags:
        assert_refused(node, node.run(script, *with_value(args, flag, hostile)), before)


@pytest.mark.parametrize("script", [*CASES, "discover-slurm.sh"])
def test_script_refuses_unknown_flag(node, script):
    before = node.snapshot()
    args = CASES.get(script, ([], []))[0]
    assert_refused(node, node.run(script, *args, "--reboot-now"), before)


@pytest.mark.parametrize("script", list(CASES))
def test_script_refuses_flag_without_value(node, script):
    before = node.snapshot()
    args, flags = CASES[script]
    last = flags[-1]
    truncated = args[: args.index(last)] + [last]
    assert_refused(node, node.run(script, *truncated), before)


@pytest.mark.parametrize(
    "host", ["999.1.1.1", "01.2.3.4", "10.0.0", "-head", "head-", "a..b", "head.", "a" * 64, "h_1", "10.0.0.1/24"]
)
def test_set_accounting_refuses_malformed_host(node, host):
    before = node.snapshot()
    result = node.run("set-accounting.sh", "--host", host, "--port", "6819", "--backup-id", "exec-1")
    assert_refused(node, result, before)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "06819", "6819x", "1e3"])
def test_set_accounting_refuses_port_out_of_range(node, port):
    before = node.snapshot()
    result = node.run("set-accounting.sh", "--host", "10.0.0.20", "--port", port, "--backup-id", "exec-1")
    assert_refused(node, result, before)


@pytest.mark.parametrize("value", ["AA" * 32, "a" * 63, "g" * 64, "a" * 65])
def test_install_munge_key_refuses_malformed_fingerprint(node, value):
    before = node.snapshot()
    args = with_value(CASES["install-munge-key.sh"][0], "--expect-sha256", value)
    assert_refused(node, node.run("install-munge-key.sh", *args), before)


def test_install_munge_key_refuses_both_key_sources(node):
    before = node.snapshot()
    args = [*CASES["install-munge-key.sh"][0], "--from-shared-dir"]
    assert_refused(node, node.run("install-munge-key.sh", *args), before)


def test_install_munge_key_refuses_unknown_unit_to_restart(node):
    before = node.snapshot()
    args = with_value(CASES["install-munge-key.sh"][0], "--restart", "slurmctld,sshd")
    assert_refused(node, node.run("install-munge-key.sh", *args), before)


def test_environment_path_override_is_validated(node):
    before = node.snapshot()
    result = node.run("restore-backup.sh", "--backup-id", "exec-1", env={"BACKUP_ROOT": "/tmp/x;reboot"})
    assert_refused(node, result, before)


@pytest.mark.parametrize("host", ["10.0.0.20", "ip-10-0-0-20.ec2.internal", "accounting-head", "1.2.3.4"])
def test_set_accounting_accepts_host_names_and_addresses(node, host):
    result = node.run("set-accounting.sh", "--host", host, "--port", "6819", "--backup-id", "exec-1")
    assert result.returncode == 0, result.stderr
    assert f"AccountingStorageHost={host}\n" in (node.etc / "slurm_parallelcluster.conf").read_text()


def test_help_prints_usage_and_a_json_last_line(node):
    result = node.run("install-munge-key.sh", "--help")
    assert result.returncode == 0
    assert "Usage" in result.stdout and "--expect-sha256" in result.stdout
    assert result.json == {"ok": True, "changed": False, "help": True}


@pytest.mark.parametrize("dirs", ["/opt/*", "/opt/a\n/etc", "/opt/$(id)", "relative/.munge"])
def test_shared_munge_dirs_override_is_validated(node, dirs):
    before = node.snapshot()
    args = CASES["install-munge-key.sh"][0]
    assert_refused(node, node.run("install-munge-key.sh", *args, env={"SHARED_MUNGE_DIRS": dirs}), before)
