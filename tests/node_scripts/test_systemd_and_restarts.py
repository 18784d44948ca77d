"""The scripts on every systemd a supported OS ships, and daemons that must come back (issue 9): a script never
reports ok for a restart it did not do, and says which unit did not come back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from node_fixture import BASH, SCRIPTS, file_sha, new_key, sha256

FEDERATION_DBD = "10.0.1.20"


def share_new_key(node) -> str:
    """A new federation key in the head node's shared munge dir, where compute nodes install it from."""
    key = new_key()
    (node.shared_dir / ".munge.key").write_bytes(key)
    return sha256(key)


def install_from_shared_dir(node, sha: str, *extra: str, backup_id: str = "exec-1"):
    return node.run("install-munge-key.sh", "--from-shared-dir", "--expect-sha256", sha, "--backup-id", backup_id,
                    *extra)


def set_accounting(node, *extra: str, port: str = "6819", backup_id: str = "exec-1"):
    return node.run("set-accounting.sh", "--host", FEDERATION_DBD, "--port", port, "--backup-id", backup_id, *extra)


# ---------------------------------------------------------------- systemd without `show --value`


def test_every_script_works_with_a_systemctl_that_has_no_show_value_option(node):
    node.update_state(systemd_version=219)
    refused = node.standin("systemctl", "show", "-p", "LoadState", "--value", "munge")
    assert refused.returncode == 1 and "unrecognized option '--value'" in refused.stderr  # as systemd 219 says
    old_sha = file_sha(node.key_file)

    facts = node.run("discover-slurm.sh")
    assert facts.returncode == 0, facts.stderr
    assert facts.json["slurmdbdUnit"] is True and facts.json["slurmdbdActive"] is True

    new_sha = share_new_key(node)
    installed = install_from_shared_dir(node, new_sha, "--restart", "slurmctld")
    assert installed.returncode == 0, installed.stderr
    assert installed.json["restarted"] == ["munge", "slurmctld"]
    assert file_sha(node.key_file) == new_sha and node.munge_roundtrip_ok()

    pointed = set_accounting(node)
    assert pointed.returncode == 0, pointed.stderr
    assert pointed.json["restarted"] == ["slurmctld"]

    restored = node.run("restore-backup.sh", "--backup-id", "exec-1")
    assert restored.returncode == 0, restored.stderr
    assert restored.json["restarted"] == ["munge", "slurmdbd", "slurmctld"]
    assert file_sha(node.key_file) == old_sha and node.munge_roundtrip_ok()
    assert node.unit_state("slurmctld") == "active"


def test_no_script_uses_anything_newer_than_the_oldest_supported_os():
    # (what, pattern): systemd >= 230, bash >= 5.0, or options RHEL/Rocky 8's coreutils 8.30 and util-linux lack
    newer = [
        ("systemctl show --value (systemd 230)", r"--value\b"),
        ("EPOCHSECONDS/EPOCHREALTIME (bash 5.0)", r"\bEPOCH(SECONDS|REALTIME)\b"),
        ("BASH_ARGV0 (bash 5.0)", r"\bBASH_ARGV0\b"),
        ("SRANDOM (bash 5.1)", r"\bSRANDOM\b"),
        ("wait -p (bash 5.1)", r"\bwait\s+(-n\s+)?-p\b"),
        ("${var@U/u/L/K/k} (bash 5.1+)", r"\$\{[^}]*@[ULKku]\}"),
        ("shopt options of bash 5.x", r"\bshopt\b.*\b(patsub_replacement|localvar_inherit|localvar_unset|"
                                      r"assoc_expand_once|varredir_close|noexpand_translation)\b"),
        ("install -D (its directory modes differ between coreutils releases)", r"\binstall\s+(-\w+\s+)*-D"),
        ("cp --update=none (coreutils 9.3)", r"--update="),
    ]
    found = []
    for script in sorted(SCRIPTS.glob("*.sh")):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            found += [f"{script.name}:{number}: {what}" for what, pattern in newer if re.search(pattern, code)]
    assert found == []


# ---------------------------------------------------------------- restore-backup.sh fails loudly


def test_restore_fails_naming_the_daemon_that_does_not_come_back(node):
    old_sha = file_sha(node.key_file)
    assert install_from_shared_dir(node, share_new_key(node), "--restart", "slurmctld").returncode == 0
    node.set_unit("slurmctld", fail_restarts=1)  # the next start dies at once

    result = node.run("restore-backup.sh", "--backup-id", "exec-1", "--deadline", "2")

    assert result.returncode == 1
    assert result.json["ok"] is False
    assert result.json["failedUnits"] == ["slurmctld"]
    assert result.json["restarted"] == ["munge", "slurmdbd"]  # what did come back
    assert "slurmctld" in result.json["error"]
    assert file_sha(node.key_file) == old_sha  # the files are back all the same


def test_restore_fails_when_systemctl_does_not_answer_instead_of_restarting_nothing(node):
    old_sha = file_sha(node.key_file)
    assert install_from_shared_dir(node, share_new_key(node), "--restart", "slurmctld").returncode == 0
    node.update_state(systemctl_broken=True)

    result = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert result.returncode == 1
    assert result.json["ok"] is False and result.json["found"] is True
    assert result.json["restored"] == [str(node.key_file)] and result.json["restarted"] == []
    assert "systemctl does not answer" in result.json["error"]
    assert file_sha(node.key_file) == old_sha


def test_install_fails_when_systemctl_does_not_answer_and_changes_nothing(node):
    before = node.snapshot()
    node.update_state(systemctl_broken=True)

    result = install_from_shared_dir(node, share_new_key(node), "--restart", "slurmctld")

    assert result.returncode == 1
    assert "systemctl cannot tell whether munge exists" in result.json["error"]
    after = node.snapshot()
    assert after["etc/munge/munge.key"] == before["etc/munge/munge.key"]


def _cluster_id_file(node, content: str):
    """slurmctld's clustername file with a Slurm 24.11 cluster id, in a StateSaveLocation inside the node's tree."""
    state = node.root / "var/spool/slurm.state"
    state.mkdir(parents=True, exist_ok=True)
    conf = node.etc / "slurm.conf"
    conf.write_text(conf.read_text().replace("StateSaveLocation=/var/spool/slurm.state", f"StateSaveLocation={state}"))
    (state / "clustername").write_text(content)
    return state / "clustername"


def test_restore_starts_the_slurmctld_a_killed_set_accounting_left_stopped(node):
    id_file = _cluster_id_file(node, "beta|2992\n")
    node.set_unit("slurmctld", hang_on_start=30)  # the start after the cluster id reset never finishes
    script = subprocess.Popen(
        [BASH, str(SCRIPTS / "set-accounting.sh"), "--host", FEDERATION_DBD, "--port", "6819", "--backup-id", "exec-1"],
        env=node.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while ["systemctl", "start", "slurmctld"] not in node.calls():
        assert time.monotonic() < deadline and script.poll() is None, "set-accounting.sh never started slurmctld"
        time.sleep(0.05)
    os.killpg(script.pid, signal.SIGKILL)  # as SSM's executionTimeout and CancelCommand end a command
    script.wait()
    # `timeout` runs systemctl in a process group of its own: end that start job too (it holds the node lock)
    os.kill(int((node.state / "hanging.pid").read_text()), signal.SIGKILL)
    assert node.unit_state("slurmctld") == "inactive" and not id_file.exists()
    node.set_unit("slurmctld", hang_on_start=0)

    result = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert result.returncode == 0, result.stderr
    assert result.json["restarted"] == ["slurmctld"]
    assert node.unit_state("slurmctld") == "active"
    assert id_file.read_text() == "beta|2992\n"


# ---------------------------------------------------------------- no success for work not done


def test_set_accounting_again_starts_a_slurmctld_an_earlier_failure_left_down(node):
    assert set_accounting(node).returncode == 0
    node.set_unit("slurmctld", state="failed")  # the file is right, but slurmctld does not run with it
    node.clear_calls()

    result = set_accounting(node, backup_id="exec-2")

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is True and result.json["restarted"] == ["slurmctld"]
    assert node.unit_state("slurmctld") == "active"
    assert f"AccountingStorageHost   = {FEDERATION_DBD}" in node.standin("scontrol", "show", "config").stdout
