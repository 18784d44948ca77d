"""set-accounting.sh rewrites exactly the three accounting lines, backs up first, and rolls back a broken slurmctld."""

from __future__ import annotations

import grp
import os

from node_fixture import PC_CONF_WITH_ACCOUNTING, PC_CONF_WITHOUT_ACCOUNTING, file_sha

FEDERATION_DBD = "10.0.1.20"


def set_accounting(node, *extra, host=FEDERATION_DBD, port="6819", backup_id="exec-1"):
    return node.run("set-accounting.sh", "--host", host, "--port", port, "--backup-id", backup_id, *extra)


def test_rewrites_only_the_three_lines_and_backs_up_first(node):
    pc_conf = node.etc / "slurm_parallelcluster.conf"
    munge_gid = grp.getgrnam("munge").gr_gid
    os.chown(pc_conf, 0, munge_gid)
    pc_conf.chmod(0o640)
    others = {p: p.read_bytes() for p in node.etc.rglob("*") if p.is_file() and p != pc_conf}

    result = set_accounting(node, port="6900")

    assert result.returncode == 0, result.stderr
    assert result.json == {
        "ok": True, "changed": True, "file": str(pc_conf), "restarted": ["slurmctld"], "stoppedSlurmdbd": False,
        "startedSlurmdbd": False, "clusterIdReset": False, "prunedBackups": [],
    }
    expected = (
        PC_CONF_WITH_ACCOUNTING.replace("AccountingStorageHost=ip-10-0-0-10", f"AccountingStorageHost={FEDERATION_DBD}")
        .replace("AccountingStoragePort=6819", "AccountingStoragePort=6900")
    )
    assert pc_conf.read_text() == expected
    assert (pc_conf.stat().st_mode & 0o777, pc_conf.stat().st_uid, pc_conf.stat().st_gid) == (0o640, 0, munge_gid)
    assert {p: p.read_bytes() for p in others} == others
    backup = node.backup_copy("exec-1", pc_conf)
    assert backup.read_text() == PC_CONF_WITH_ACCOUNTING
    assert (backup.stat().st_mode & 0o777, backup.stat().st_gid) == (0o640, munge_gid)
    assert node.manifest("exec-1") == [str(pc_conf)]
    assert (node.backup_root.stat().st_mode & 0o777) == 0o700
    assert node.systemctl_actions() == [("restart", "slurmctld")]
    # the restarted slurmctld runs with the new values
    live = node.standin("scontrol", "show", "config").stdout
    assert f"AccountingStorageHost   = {FEDERATION_DBD}" in live


def test_second_run_changes_nothing_and_restarts_nothing(node):
    assert set_accounting(node).json["changed"] is True
    node.clear_calls()
    before = node.snapshot()

    result = set_accounting(node)

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is False
    assert result.json["restarted"] == []
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_restore_backup_returns_the_exact_original_bytes_and_mode(node):
    pc_conf = node.etc / "slurm_parallelcluster.conf"
    pc_conf.chmod(0o600)
    original = pc_conf.read_bytes()
    assert set_accounting(node).returncode == 0
    node.clear_calls()

    result = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is True
    assert result.json["restored"] == [str(pc_conf)]
    assert result.json["restarted"] == ["slurmctld"]
    assert pc_conf.read_bytes() == original
    assert pc_conf.stat().st_mode & 0o777 == 0o600
    assert node.systemctl_actions() == [("restart", "slurmctld")]
    assert "AccountingStorageHost   = ip-10-0-0-10" in node.standin("scontrol", "show", "config").stdout

    node.clear_calls()
    again = node.run("restore-backup.sh", "--backup-id", "exec-1")
    assert again.json["changed"] is False and again.json["restored"] == []
    assert node.systemctl_actions() == []


def test_restore_with_hold_of_a_config_change_stops_slurmctld_and_a_later_run_starts_it_on_the_old_config(node):
    """The pairing's rollback holds slurmctld while the member's nodes switch back: a restored accounting config
    alone (no key change) must not leave slurmctld running on the pairing's settings, nor stopped for good."""
    pc_conf = node.etc / "slurm_parallelcluster.conf"
    original = pc_conf.read_bytes()
    assert set_accounting(node).returncode == 0
    node.clear_calls()

    held = node.run("restore-backup.sh", "--backup-id", "exec-1", "--hold", "slurmctld")

    assert held.returncode == 0, held.stderr
    assert pc_conf.read_bytes() == original
    assert node.systemctl_actions() == [("stop", "slurmctld")] and node.unit_state("slurmctld") == "inactive"
    assert held.json["restarted"] == []
    node.clear_calls()

    started = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert started.returncode == 0, started.stderr
    assert started.json["restarted"] == ["slurmctld"] and node.unit_state("slurmctld") == "active"
    assert "AccountingStorageHost   = ip-10-0-0-10" in node.standin("scontrol", "show", "config").stdout


def test_adds_the_lines_when_the_cluster_has_no_accounting(make_node):
    node = make_node(pc_conf=PC_CONF_WITHOUT_ACCOUNTING)
    pc_conf = node.etc / "slurm_parallelcluster.conf"

    result = set_accounting(node)

    assert result.returncode == 0, result.stderr
    text = pc_conf.read_text()
    assert text.startswith(PC_CONF_WITHOUT_ACCOUNTING)
    assert text.endswith(
        "AccountingStorageType=accounting_storage/slurmdbd\n"
        f"AccountingStorageHost={FEDERATION_DBD}\nAccountingStoragePort=6819\n"
    )
    assert set_accounting(node).json["changed"] is False

    assert node.run("restore-backup.sh", "--backup-id", "exec-1").returncode == 0
    assert pc_conf.read_text() == PC_CONF_WITHOUT_ACCOUNTING


def test_keeps_a_missing_final_newline_missing(make_node):
    conf = PC_CONF_WITH_ACCOUNTING.rstrip("\n")
    node = make_node(pc_conf=conf)
    assert set_accounting(node).returncode == 0
    assert (node.etc / "slurm_parallelcluster.conf").read_text() == conf.replace(
        "AccountingStorageHost=ip-10-0-0-10", f"AccountingStorageHost={FEDERATION_DBD}"
    )


def test_restores_the_file_when_slurmctld_does_not_come_back(node):
    pc_conf = node.etc / "slurm_parallelcluster.conf"
    original = pc_conf.read_bytes()
    node.set_unit("slurmctld", fail_if_accounting_host=FEDERATION_DBD)

    result = set_accounting(node, "--deadline", "2")

    assert result.returncode == 1
    assert result.json["ok"] is False
    assert result.json["rolledBack"] is True
    assert "slurmctld" in result.json["error"]
    assert pc_conf.read_bytes() == original
    assert node.unit_state("slurmctld") == "active"
    assert node.systemctl_actions() == [("restart", "slurmctld"), ("restart", "slurmctld")]


def test_refuses_when_another_include_overrides_the_accounting_host(node):
    custom = node.etc / "pcluster/custom_slurm_settings_include_file_slurm.conf"
    custom.write_text("AccountingStorageHost=elsewhere\n")
    before = node.snapshot()

    result = set_accounting(node)

    assert result.returncode == 1
    assert str(custom) in result.json["error"]
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_stop_local_slurmdbd_is_recorded_and_undone_by_restore(node):
    result = set_accounting(node, "--stop-local-slurmdbd")

    assert result.returncode == 0, result.stderr
    assert result.json["stoppedSlurmdbd"] is True
    assert node.unit_state("slurmdbd") == "inactive"
    assert node.load_state()["units"]["slurmdbd"]["enabled"] is False
    assert set(node.manifest("exec-1")) == {
        str(node.etc / "slurm_parallelcluster.conf"), "stopped:slurmdbd", "disabled:slurmdbd",
    }
    node.clear_calls()
    assert set_accounting(node, "--stop-local-slurmdbd").json["changed"] is False
    assert node.systemctl_actions() == []

    restored = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert restored.returncode == 0, restored.stderr
    assert restored.json["restarted"] == ["slurmdbd", "slurmctld"]
    assert node.unit_state("slurmdbd") == "active"
    assert node.load_state()["units"]["slurmdbd"]["enabled"] is True


def test_refuses_to_stop_the_slurmdbd_it_would_point_at(node):
    before = node.snapshot()
    result = set_accounting(node, "--stop-local-slurmdbd", host="127.0.0.1")
    assert result.returncode == 1
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_leaving_the_federation_starts_the_own_slurmdbd_before_slurmctld_points_back_at_it(node):
    """A member that opts out goes back to its own accounting (the slurmdbd its pairing stopped)."""
    assert set_accounting(node, "--stop-local-slurmdbd").returncode == 0
    node.clear_calls()

    result = set_accounting(node, "--start-local-slurmdbd", host="127.0.0.1", backup_id="leave-1")

    assert result.returncode == 0, result.stderr
    assert (result.json["startedSlurmdbd"], result.json["restarted"]) == (True, ["slurmdbd", "slurmctld"])
    assert node.unit_state("slurmdbd") == "active"
    assert node.load_state()["units"]["slurmdbd"]["enabled"] is True
    actions = node.systemctl_actions()
    assert actions.index(("start", "slurmdbd")) < actions.index(("restart", "slurmctld"))
    assert "AccountingStorageHost   = 127.0.0.1" in node.standin("scontrol", "show", "config").stdout
    node.clear_calls()
    assert set_accounting(node, "--start-local-slurmdbd", host="127.0.0.1", backup_id="leave-1").json["changed"] is False
    assert node.systemctl_actions() == []

    restored = node.run("restore-backup.sh", "--backup-id", "leave-1")  # undoes exactly the departure

    assert restored.returncode == 0, restored.stderr
    assert node.unit_state("slurmdbd") == "inactive"
    assert node.load_state()["units"]["slurmdbd"]["enabled"] is False
    assert f"AccountingStorageHost   = {FEDERATION_DBD}" in node.standin("scontrol", "show", "config").stdout


def test_refuses_to_start_a_local_slurmdbd_for_another_host_or_with_stop(node):
    before = node.snapshot()
    elsewhere = set_accounting(node, "--start-local-slurmdbd")
    both = set_accounting(node, "--start-local-slurmdbd", "--stop-local-slurmdbd", host="127.0.0.1")
    assert (elsewhere.returncode, both.returncode) == (1, 2)
    assert "not this node" in elsewhere.json["error"]
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_backup_keeps_the_state_before_the_first_run_of_an_execution(node):
    pc_conf = node.etc / "slurm_parallelcluster.conf"
    original_sha = file_sha(pc_conf)
    assert set_accounting(node, host="10.0.1.20").returncode == 0
    assert set_accounting(node, host="10.0.1.21").returncode == 0
    assert file_sha(node.backup_copy("exec-1", pc_conf)) == original_sha
    assert node.run("restore-backup.sh", "--backup-id", "exec-1").returncode == 0
    assert file_sha(pc_conf) == original_sha


def test_restore_of_an_unknown_backup_changes_nothing(node):
    before = node.snapshot()
    result = node.run("restore-backup.sh", "--backup-id", "never-ran")
    assert result.returncode == 0
    assert result.json == {"ok": True, "changed": False, "found": False, "restored": [], "restarted": [],
                           "failedUnits": []}
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_fails_without_a_slurmctld_unit(node):
    node.remove_unit("slurmctld")
    before = node.snapshot()
    result = set_accounting(node)
    assert result.returncode == 1
    assert "slurmctld" in result.json["error"]
    assert node.snapshot() == before


def test_restarts_a_slurmctld_still_running_with_the_old_values(node):
    # an earlier run wrote the file but slurmctld never picked it up (e.g. the node rebooted mid-run)
    pc_conf = node.etc / "slurm_parallelcluster.conf"
    pc_conf.write_text(PC_CONF_WITH_ACCOUNTING.replace("AccountingStorageHost=ip-10-0-0-10", f"AccountingStorageHost={FEDERATION_DBD}"))
    before = pc_conf.stat()

    result = set_accounting(node)

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is True and result.json["restarted"] == ["slurmctld"]
    assert (pc_conf.stat().st_ino, pc_conf.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert f"AccountingStorageHost   = {FEDERATION_DBD}" in node.standin("scontrol", "show", "config").stdout


def _cluster_id_file(node, content: str | None):
    """A StateSaveLocation inside the node's tree holding slurmctld's clustername file (None: no file)."""
    state = node.root / "var/spool/slurm.state"
    state.mkdir(parents=True, exist_ok=True)
    conf = node.etc / "slurm.conf"
    conf.write_text(conf.read_text().replace("StateSaveLocation=/var/spool/slurm.state", f"StateSaveLocation={state}"))
    if content is not None:
        (state / "clustername").write_text(content)
    return state / "clustername"


def test_a_new_slurmdbd_resets_the_2411_cluster_id_and_restore_puts_it_back(node):
    id_file = _cluster_id_file(node, "beta|2992\n")

    result = set_accounting(node)

    assert result.returncode == 0, result.stderr
    assert result.json["clusterIdReset"] is True
    assert not id_file.exists()  # slurmctld takes its id from the new slurmdbd
    assert node.backup_copy("exec-1", id_file).read_text() == "beta|2992\n"
    assert str(id_file) in node.manifest("exec-1")
    # removed while slurmctld was stopped, never under a running one
    assert node.systemctl_actions() == [("stop", "slurmctld"), ("start", "slurmctld")]

    node.clear_calls()
    restored = node.run("restore-backup.sh", "--backup-id", "exec-1")
    assert restored.returncode == 0, restored.stderr
    assert id_file.read_text() == "beta|2992\n"
    assert str(id_file) in restored.json["restored"]
    assert "slurmctld" in restored.json["restarted"]


def test_a_2205_clustername_file_without_an_id_is_left_alone(node):
    id_file = _cluster_id_file(node, "beta\n")

    result = set_accounting(node)

    assert result.returncode == 0, result.stderr
    assert result.json["clusterIdReset"] is False
    assert id_file.read_text() == "beta\n"
    assert node.systemctl_actions() == [("restart", "slurmctld")]


def test_the_same_slurmdbd_keeps_the_cluster_id(node):
    id_file = _cluster_id_file(node, "beta|2992\n")
    assert set_accounting(node).json["clusterIdReset"] is True
    id_file.write_text("beta|3001\n")  # what the new slurmdbd gave slurmctld
    node.clear_calls()
    node.etc.joinpath("slurm_parallelcluster.conf").write_text(
        node.etc.joinpath("slurm_parallelcluster.conf").read_text() + "# regenerated by pcluster update\n")

    result = set_accounting(node, backup_id="exec-2")  # a re-apply: same host and port, the file changed

    assert result.returncode == 0, result.stderr
    assert result.json["clusterIdReset"] is False
    assert id_file.read_text() == "beta|3001\n"


def test_a_slurmctld_that_exits_at_start_is_reported_with_its_fatal_line(node):
    log = node.root / "var/log/slurm/slurmctld.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("[2026-11-30T10:00:00.000] fatal: an old failure, long fixed\n")
    conf = node.etc / "slurm.conf"
    conf.write_text(conf.read_text() + f"SlurmctldLogFile={log}\n")
    node.set_unit("slurmctld", fail_if_accounting_host=FEDERATION_DBD,
                  log_on_failure=(str(log), "[2026-12-01T10:00:00.000] fatal: CLUSTER ID MISMATCH."))

    result = set_accounting(node)

    assert result.returncode == 1
    assert "slurmctld exited" in result.json["error"]
    assert "fatal: CLUSTER ID MISMATCH." in result.json["error"]
    assert "old failure" not in result.json["error"]
    assert result.json["rolledBack"] is True
