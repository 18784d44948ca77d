"""The key rotation's node scripts against a real moto Secrets Manager, the real aws CLI and a real munged:
create-pending-munge-key.sh (createSecret on the accounting head node), stage-munge-key.sh (the new key beside
the old one, unused), install-munge-key.sh --from-staged (the switch), restore-backup.sh (the way back).

Keys are compared by sha256 only; a key a script generated is added to the leak scanner as soon as the test
learns it, and that script's output is scanned again.
"""

from __future__ import annotations

import base64
import pwd

import pytest

from node_fixture import KEYS_IN_PLAY, REGION, Opaque, file_sha, key_leaks, new_key, sha256

TOKEN = "3f0c2d4e-1b2a-5c6d-8e9f-0a1b2c3d4e5f"  # the rotation derives it from its execution


def labels(secrets, name: str) -> dict[str, list[str]]:
    return {v: sorted(s) for v, s in secrets.describe_secret(SecretId=name)["VersionIdsToStages"].items()}


def secret_key(secrets, name: str, **selector) -> Opaque:
    """A version's key bytes (registered with the leak scanner before anything can print them)."""
    key = Opaque(base64.b64decode(secrets.get_secret_value(SecretId=name, **selector)["SecretString"]))
    KEYS_IN_PLAY.append(key)
    return key


def assert_no_leak(result) -> None:
    leaks = key_leaks((result.stdout + result.stderr).encode())
    assert not leaks, f"{result.script} printed key material: {leaks}"


@pytest.fixture
def federation_secret(node, secrets, secret_name) -> str:
    """The federation secret whose AWSCURRENT is the node's own key, as a pairing leaves it."""
    key = Opaque(node.key_file.read_bytes())
    KEYS_IN_PLAY.append(key)
    secrets.put_secret_value(SecretId=secret_name, SecretString=base64.b64encode(key).decode())
    return secret_name


def create_pending(node, secret_name, *extra, token=TOKEN):
    return node.run("create-pending-munge-key.sh", "--secret-id", secret_name, "--region", REGION,
                    "--version-id", token, *extra)


def staging_file(node, backup_id="rot-1"):
    return node.root / "var/lib/slurm-multicluster/staged" / backup_id / "munge.key"


def mode_owner(path):
    st = path.stat()
    return st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name


# ---------------------------------------------------------------- create-pending-munge-key.sh


def test_create_pending_puts_a_new_1024_byte_key_as_awspending_and_leaves_awscurrent(node, secrets, federation_secret):
    (current_version,) = labels(secrets, federation_secret)
    before = node.snapshot()

    result = create_pending(node, federation_secret)

    assert result.returncode == 0, result.stderr
    pending = secret_key(secrets, federation_secret, VersionStage="AWSPENDING")
    assert_no_leak(result)
    assert len(pending) == 1024
    assert result.json == {
        "ok": True, "changed": True, "sha256": sha256(pending), "versionId": TOKEN, "keyBytes": 1024,
        "currentSha256": file_sha(node.key_file), "currentVersionId": current_version,
    }
    assert sha256(pending) != file_sha(node.key_file)
    assert labels(secrets, federation_secret) == {current_version: ["AWSCURRENT"], TOKEN: ["AWSPENDING"]}
    assert node.snapshot() == before  # the node itself changes nothing
    assert node.systemctl_actions() == []
    assert list((node.root / "tmp").iterdir()) == []  # the private temp dir is gone


def test_create_pending_second_run_finds_its_own_key(node, secrets, federation_secret):
    first = create_pending(node, federation_secret)
    assert first.returncode == 0, first.stderr

    second = create_pending(node, federation_secret)

    assert second.returncode == 0, second.stderr
    assert second.json["changed"] is False
    assert second.json["sha256"] == first.json["sha256"]
    assert len(secrets.list_secret_version_ids(SecretId=federation_secret)["Versions"]) == 2


def test_a_new_rotation_moves_the_pending_label_to_its_own_key(node, secrets, federation_secret):
    assert create_pending(node, federation_secret).returncode == 0
    other = "9a8b7c6d-1b2a-5c6d-8e9f-0a1b2c3d4e5f"

    result = create_pending(node, federation_secret, token=other)

    assert result.returncode == 0, result.stderr
    found = labels(secrets, federation_secret)
    assert found[other] == ["AWSPENDING"] and found[TOKEN] == []


def test_create_pending_honours_key_bytes(node, secrets, federation_secret):
    result = create_pending(node, federation_secret, "--key-bytes", "32")
    assert result.returncode == 0, result.stderr
    assert len(secret_key(secrets, federation_secret, VersionStage="AWSPENDING")) == 32


def test_create_pending_refuses_when_awscurrent_is_not_the_key_this_node_runs(node, secrets, secret_name):
    other = new_key()
    secrets.put_secret_value(SecretId=secret_name, SecretString=base64.b64encode(other).decode())

    result = create_pending(node, secret_name)

    assert result.returncode == 1
    assert "not the key this node runs" in result.json["error"]
    assert len(secrets.list_secret_version_ids(SecretId=secret_name)["Versions"]) == 1


def test_create_pending_refuses_a_secret_without_awscurrent(node, secrets, secret_name):
    result = create_pending(node, secret_name)
    assert result.returncode == 1
    assert "no AWSCURRENT" in result.json["error"]


def test_create_pending_puts_the_key_on_no_command_line(node, secrets, federation_secret):
    result = create_pending(node, federation_secret)
    assert result.returncode == 0, result.stderr
    secret_key(secrets, federation_secret, VersionStage="AWSPENDING")
    calls = [c for c in node.calls() if c[:1] == ["aws"]]
    assert not key_leaks(repr(calls).encode())
    (put,) = [c for c in calls if c[1:3] == ["secretsmanager", "put-secret-value"]]
    assert put[put.index("--secret-string") + 1].startswith("file://")
    assert put[put.index("--version-stages") + 1] == "AWSPENDING"
    assert put[put.index("--client-request-token") + 1] == TOKEN


@pytest.mark.parametrize("flag,value", [
    ("--version-id", "short"), ("--version-id", "x" * 65), ("--version-id", "$(id)-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("--key-bytes", "31"), ("--key-bytes", "1025"), ("--key-bytes", "1e3"), ("--secret-id", "a;b"),
    ("--region", "us-east-1;id"),
])
def test_create_pending_refuses_invalid_input_and_touches_nothing(node, secrets, federation_secret, flag, value):
    args = {"--secret-id": federation_secret, "--region": REGION, "--version-id": TOKEN, "--key-bytes": "1024"}
    args[flag] = value
    result = node.run("create-pending-munge-key.sh", *[x for pair in args.items() for x in pair])
    assert result.returncode == 2
    assert result.json["ok"] is False and result.json["changed"] is False
    assert len(secrets.list_secret_version_ids(SecretId=federation_secret)["Versions"]) == 1


# ---------------------------------------------------------------- stage-munge-key.sh


@pytest.fixture
def pending_key(secrets, federation_secret) -> Opaque:
    """A new key as the secret's AWSPENDING (what create-pending-munge-key.sh leaves)."""
    key = new_key()
    secrets.put_secret_value(SecretId=federation_secret, SecretString=base64.b64encode(key).decode(),
                             ClientRequestToken=TOKEN, VersionStages=["AWSPENDING"])
    return key


def stage_on_head(node, secret_name, expect, *extra, backup_id="rot-1"):
    return node.run("stage-munge-key.sh", "--secret-id", secret_name, "--region", REGION,
                    "--expect-sha256", expect, "--backup-id", backup_id, *extra)


def test_stage_puts_the_pending_key_beside_the_key_without_using_it(node, federation_secret, pending_key):
    key_before = node.snapshot()["etc/munge/munge.key"]
    shared_before = node.snapshot()["opt/parallelcluster/shared/.munge/.munge.key"]

    result = stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs")

    assert result.returncode == 0, result.stderr
    staged, shared_pending = staging_file(node), node.shared_dir / ".munge.key.pending"
    assert result.json == {"ok": True, "changed": True, "sha256": sha256(pending_key),
                           "stagedFiles": [str(staged), str(shared_pending)], "source": "secret"}
    assert file_sha(staged) == file_sha(shared_pending) == sha256(pending_key)
    assert mode_owner(staged) == mode_owner(shared_pending) == (0o600, "root")
    after = node.snapshot()
    assert after["etc/munge/munge.key"] == key_before  # munge's key and the boot copy are untouched
    assert after["opt/parallelcluster/shared/.munge/.munge.key"] == shared_before
    assert node.systemctl_actions() == []  # nothing restarted
    assert node.munge_roundtrip_ok()
    assert node.manifest("rot-1") == [f"absent:{staged}", f"absent:{shared_pending}"]


def test_stage_second_run_changes_nothing(node, federation_secret, pending_key):
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    before = node.snapshot()

    result = stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs")

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is False
    assert node.snapshot() == before


def test_stage_refuses_a_fingerprint_mismatch_and_stages_nothing(node, federation_secret, pending_key):
    before = node.snapshot()
    result = stage_on_head(node, federation_secret, "0" * 64, "--shared-dirs")
    assert result.returncode == 1
    assert "fingerprint mismatch" in result.json["error"]
    assert node.snapshot() == before


def test_stage_fails_clearly_without_a_pending_version(node, federation_secret):
    result = stage_on_head(node, federation_secret, "a" * 64)
    assert result.returncode == 1
    assert "no AWSPENDING version" in result.json["error"]


def compute_node(make_node, head_key_pending: bytes | None = None):
    """A compute node: munge and slurmd only; its shared dir is the head node's NFS export."""
    node = make_node()
    node.remove_unit("slurmctld")
    node.remove_unit("slurmdbd")
    node.set_unit("slurmd", state="active")
    if head_key_pending is not None:
        node.write_key(node.shared_dir / ".munge.key.pending", head_key_pending, 0o600)
    node.clear_calls()
    return node


def test_compute_node_stages_what_the_head_node_staged_in_the_shared_dir(make_node, pending_key):
    node = compute_node(make_node, pending_key)
    key_before = node.snapshot()["etc/munge/munge.key"]

    result = node.run("stage-munge-key.sh", "--from-shared-dir", "--expect-sha256", sha256(pending_key),
                      "--backup-id", "rot-1")

    assert result.returncode == 0, result.stderr
    assert result.json["source"] == "shared-dir"
    assert file_sha(staging_file(node)) == sha256(pending_key)
    assert node.snapshot()["etc/munge/munge.key"] == key_before
    assert node.systemctl_actions() == []


def test_compute_node_refuses_when_the_head_node_staged_nothing(make_node):
    node = compute_node(make_node)
    result = node.run("stage-munge-key.sh", "--from-shared-dir", "--expect-sha256", "a" * 64, "--backup-id", "rot-1")
    assert result.returncode == 1
    assert "nothing staged by the head node" in result.json["error"]


def test_restore_removes_what_a_failed_rotation_staged(node, federation_secret, pending_key):
    before = node.snapshot()
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0

    result = node.run("restore-backup.sh", "--backup-id", "rot-1")

    assert result.returncode == 0, result.stderr
    assert result.json["restarted"] == []  # munge never used the staged key
    assert not staging_file(node).exists() and not (node.shared_dir / ".munge.key.pending").exists()
    assert {p: s for p, s in node.snapshot().items() if "backups/" not in p} == before


# ---------------------------------------------------------------- install-munge-key.sh --from-staged


def switch(node, expect, *extra, backup_id="rot-1"):
    return node.run("install-munge-key.sh", "--from-staged", "--expect-sha256", expect, "--backup-id", backup_id, *extra)


def test_switch_installs_the_staged_key_restarts_and_removes_the_staged_copies(node, federation_secret, pending_key):
    old_sha = file_sha(node.key_file)
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    node.clear_calls()

    result = switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmdbd,slurmctld")

    assert result.returncode == 0, result.stderr
    shared = node.shared_dir / ".munge.key"
    assert result.json == {
        "ok": True, "changed": True, "sha256": sha256(pending_key), "previousSha256": old_sha,
        "restarted": ["munge", "slurmdbd", "slurmctld"], "sharedFiles": [str(shared)], "source": "staged",
        "unstaged": [str(staging_file(node)), str(node.shared_dir / ".munge.key.pending")], "prunedBackups": [],
    }
    assert file_sha(node.key_file) == file_sha(shared) == sha256(pending_key)
    assert mode_owner(node.key_file) == (0o400, "munge")
    assert not staging_file(node).exists() and not (node.shared_dir / ".munge.key.pending").exists()
    assert node.systemctl_actions() == [("restart", "munge"), ("restart", "slurmdbd"), ("restart", "slurmctld")]
    assert node.munge_roundtrip_ok()
    # the backup holds the key that was current, for the rollback
    assert file_sha(node.backup_copy("rot-1", node.key_file)) == old_sha


def test_switch_second_run_is_a_no_op(node, federation_secret, pending_key):
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    assert switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmctld").returncode == 0
    node.clear_calls()
    before = node.snapshot()

    result = switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmctld")

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is False and result.json["restarted"] == []
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_switch_with_hold_leaves_slurmctld_stopped_until_start_held(node, federation_secret, pending_key):
    """While compute nodes still run the old key, a job ending there must find slurmctld down (its slurmstepd
    retries) rather than up on the new key (which refuses its report for good)."""
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    assert node.unit_state("slurmctld") == "active"
    node.clear_calls()

    held = switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmdbd", "--hold", "slurmctld")

    assert held.returncode == 0, held.stderr
    assert held.json["held"] == ["slurmctld"] and held.json["restarted"] == ["munge", "slurmdbd"]
    assert node.systemctl_actions() == [("stop", "slurmctld"), ("restart", "munge"), ("restart", "slurmdbd")]
    assert node.unit_state("slurmctld") == "inactive"
    assert "held:slurmctld" in node.manifest("rot-1")
    assert file_sha(node.key_file) == sha256(pending_key)
    node.clear_calls()

    started = switch(node, sha256(pending_key), "--start-held")

    assert started.returncode == 0, started.stderr
    assert started.json["changed"] is True and started.json["restarted"] == ["slurmctld"]
    assert node.systemctl_actions() == [("start", "slurmctld")]
    assert node.unit_state("slurmctld") == "active"
    node.clear_calls()
    again = switch(node, sha256(pending_key), "--start-held")  # idempotent: nothing held is stopped any more
    assert again.returncode == 0 and again.json["changed"] is False and again.json["restarted"] == []
    assert node.systemctl_actions() == []


def test_start_held_refuses_while_the_node_does_not_run_the_expected_key(node, federation_secret, pending_key):
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    assert switch(node, sha256(pending_key), "--shared-dirs", "--hold", "slurmctld").returncode == 0
    node.clear_calls()

    result = switch(node, "b" * 64, "--start-held")  # not the key this node runs: slurmctld must not start on it

    assert result.returncode == 1
    assert node.unit_state("slurmctld") == "inactive" and node.systemctl_actions() == []


def test_restore_backup_starts_a_held_slurmctld_again_on_the_old_key(node, federation_secret, pending_key):
    old_sha = file_sha(node.key_file)
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    assert switch(node, sha256(pending_key), "--shared-dirs", "--hold", "slurmctld").returncode == 0
    assert node.unit_state("slurmctld") == "inactive"

    result = node.run("restore-backup.sh", "--backup-id", "rot-1")

    assert result.returncode == 0, result.stderr
    assert file_sha(node.key_file) == old_sha
    assert "slurmctld" in result.json["restarted"] and node.unit_state("slurmctld") == "active"


def test_restore_backup_with_hold_leaves_slurmctld_stopped_until_a_run_without_it(node, federation_secret, pending_key):
    """The rollback's order: the head node goes back to the old key with slurmctld held down while its nodes go
    back, then a plain run starts it (a job ending meanwhile retries its end report)."""
    old_sha = file_sha(node.key_file)
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    assert switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmdbd,slurmctld").returncode == 0
    node.clear_calls()

    held = node.run("restore-backup.sh", "--backup-id", "rot-1", "--restart-failed", "--hold", "slurmctld")

    assert held.returncode == 0, held.stderr
    assert file_sha(node.key_file) == old_sha
    assert node.systemctl_actions()[:2] == [("stop", "slurmctld"), ("restart", "munge")]
    assert "slurmctld" not in held.json["restarted"] and node.unit_state("slurmctld") == "inactive"
    node.clear_calls()

    started = node.run("restore-backup.sh", "--backup-id", "rot-1", "--restart-failed")

    assert started.returncode == 0, started.stderr
    assert started.json["restarted"] == ["slurmctld"] and node.unit_state("slurmctld") == "active"
    assert node.systemctl_actions() == [("restart", "slurmctld")]


def test_restore_backup_with_hold_changes_nothing_when_the_key_did_not_change(node):
    result = node.run("restore-backup.sh", "--backup-id", "never-ran", "--hold", "slurmctld")
    assert result.returncode == 0 and result.json["changed"] is False
    assert node.unit_state("slurmctld") == "active" and node.systemctl_actions() == []
    assert node.run("restore-backup.sh", "--backup-id", "rot-1", "--hold", "slurmd").returncode == 2


def test_a_switch_that_fails_after_holding_slurmctld_starts_it_again(node, federation_secret, pending_key):
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    node.set_unit("slurmdbd", fail_restarts=1)  # the switch fails after munge restarted, slurmctld held

    result = switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmdbd", "--hold", "slurmctld",
                    "--deadline", "3")

    assert result.returncode == 1 and result.json["rolledBack"] is True
    assert node.unit_state("slurmctld") == "active"  # not left down by a failed switch


@pytest.mark.parametrize("extra", [("--hold", "slurmd"), ("--hold", "slurmctld", "--restart", "slurmctld"),
                                   ("--hold", "slurmctld", "--start-held")])
def test_hold_takes_only_slurmctld_and_not_with_its_restart_or_start(node, extra):
    before = node.snapshot()
    result = switch(node, "a" * 64, *extra)
    assert result.returncode == 2
    assert node.snapshot() == before and node.systemctl_actions() == []


def test_switch_refuses_when_nothing_was_staged(node):
    before = node.snapshot()
    result = switch(node, "a" * 64, "--shared-dirs", "--restart", "slurmctld")
    assert result.returncode == 1
    assert "nothing staged" in result.json["error"]
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_switch_rolls_itself_back_when_slurmctld_does_not_come_back(node, federation_secret, pending_key):
    old_sha = file_sha(node.key_file)
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    node.set_unit("slurmctld", fail_restarts=1)

    result = switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmctld", "--deadline", "2")

    assert result.returncode == 1 and result.json["rolledBack"] is True
    assert file_sha(node.key_file) == file_sha(node.shared_dir / ".munge.key") == old_sha
    assert staging_file(node).exists()  # still staged: the federation-wide rollback removes it
    assert node.unit_state("slurmctld") == "active"


def test_restore_after_a_switch_puts_the_previous_key_back_and_restarts(node, federation_secret, pending_key):
    before = node.snapshot()
    assert stage_on_head(node, federation_secret, sha256(pending_key), "--shared-dirs").returncode == 0
    assert switch(node, sha256(pending_key), "--shared-dirs", "--restart", "slurmctld").returncode == 0
    node.clear_calls()

    result = node.run("restore-backup.sh", "--backup-id", "rot-1", "--restart-failed")

    assert result.returncode == 0, result.stderr
    assert result.json["restarted"] == ["munge", "slurmdbd", "slurmctld"]
    assert {p: s for p, s in node.snapshot().items() if "backups/" not in p} == before
    assert node.munge_roundtrip_ok()


def test_compute_node_switches_from_its_staged_copy(make_node, pending_key):
    node = compute_node(make_node, pending_key)
    assert node.run("stage-munge-key.sh", "--from-shared-dir", "--expect-sha256", sha256(pending_key),
                    "--backup-id", "rot-1").returncode == 0
    (node.shared_dir / ".munge.key.pending").unlink()  # the head node already switched and removed its copy

    result = switch(node, sha256(pending_key), "--restart", "slurmd")

    assert result.returncode == 0, result.stderr
    assert result.json["restarted"] == ["munge", "slurmd"]
    assert file_sha(node.key_file) == sha256(pending_key)
    assert node.munge_roundtrip_ok()


# ---------------------------------------------------------------- restore-backup.sh --restart-failed


def test_restart_failed_brings_back_a_daemon_that_died_even_without_a_backup(node):
    node.set_unit("slurmctld", state="failed")

    plain = node.run("restore-backup.sh", "--backup-id", "rot-1")
    assert plain.json["restarted"] == [] and node.unit_state("slurmctld") == "failed"

    result = node.run("restore-backup.sh", "--backup-id", "rot-1", "--restart-failed")

    assert result.returncode == 0, result.stderr
    assert result.json["found"] is False and result.json["changed"] is True
    assert result.json["restarted"] == ["slurmctld"]
    assert node.unit_state("slurmctld") == "active"


def test_restart_failed_leaves_deliberately_stopped_daemons_alone(node):
    node.set_unit("slurmdbd", state="inactive")
    result = node.run("restore-backup.sh", "--backup-id", "rot-1", "--restart-failed")
    assert result.returncode == 0, result.stderr
    assert result.json["restarted"] == [] and result.json["changed"] is False
    assert node.unit_state("slurmdbd") == "inactive"


# ---------------------------------------------------------------- verify-member.sh reports the key in use


def test_verify_reports_the_fingerprint_of_the_key_in_use(node):
    node.update_state(clusters={"alpha": {"host": "10.0.0.10", "port": 6820}, "beta": {"host": "10.0.1.20", "port": 6820}},
                      submit_ok=["beta"])
    result = node.run("verify-member.sh", "--peers", "beta", "--deadline", "5")
    assert result.returncode == 0, result.stderr
    assert result.json["mungeKeySha256"] == file_sha(node.key_file)


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize("script,args", [
    ("stage-munge-key.sh", ["--secret-id", "x;reboot", "--region", REGION, "--expect-sha256", "a" * 64, "--backup-id", "r"]),
    ("stage-munge-key.sh", ["--secret-id", "s", "--region", REGION, "--expect-sha256", "a" * 64, "--backup-id", "$(id)"]),
    ("stage-munge-key.sh", ["--from-shared-dir", "--secret-id", "s", "--expect-sha256", "a" * 64, "--backup-id", "r"]),
    ("stage-munge-key.sh", ["--secret-id", "s", "--region", REGION, "--expect-sha256", "a" * 64, "--backup-id", "r",
                            "--version-stage", "AWSOTHER"]),
    ("install-munge-key.sh", ["--from-staged", "--from-shared-dir", "--expect-sha256", "a" * 64, "--backup-id", "r"]),
    ("install-munge-key.sh", ["--from-staged", "--secret-id", "s", "--expect-sha256", "a" * 64, "--backup-id", "r"]),
    ("restore-backup.sh", ["--backup-id", "r", "--restart-failed=yes"]),
])
def test_rotation_scripts_refuse_invalid_input_and_change_nothing(node, script, args):
    before = node.snapshot()
    result = node.run(script, *args)
    assert result.returncode == 2, result.stderr
    assert result.json["ok"] is False and result.json["changed"] is False
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_staging_root_override_is_validated(node):
    before = node.snapshot()
    result = node.run("stage-munge-key.sh", "--from-shared-dir", "--expect-sha256", "a" * 64, "--backup-id", "r",
                      env={"STAGING_ROOT": "/tmp/$(id)"})
    assert result.returncode == 2
    assert node.snapshot() == before
