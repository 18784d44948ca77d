"""upload-munge-key.sh and install-munge-key.sh against a real moto Secrets Manager, the real aws CLI and a real munged.

Keys are compared by sha256 only, so no assertion can print key bytes.
"""

from __future__ import annotations

import base64
import pwd

import pytest

from node_fixture import REGION, file_sha, new_key, sha256


def secret_sha(secrets, name: str, stage: str = "AWSCURRENT") -> str:
    value = secrets.get_secret_value(SecretId=name, VersionStage=stage)["SecretString"]
    return sha256(base64.b64decode(value))


def put_key(secrets, name: str, key: bytes) -> str:
    return secrets.put_secret_value(SecretId=name, SecretString=base64.b64encode(key).decode())["VersionId"]


def install(node, secret_name, expect, *extra, backup_id="exec-1"):
    return node.run(
        "install-munge-key.sh", "--secret-id", secret_name, "--region", REGION, "--expect-sha256", expect,
        "--backup-id", backup_id, *extra,
    )


def mode_owner(path):
    st = path.stat()
    return st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name


# ---------------------------------------------------------------- upload-munge-key.sh


def test_upload_stores_the_key_once_as_base64_secret_string(node, secrets, secret_name):
    local_sha = file_sha(node.key_file)

    first = node.run("upload-munge-key.sh", "--secret-id", secret_name, "--region", REGION)

    assert first.returncode == 0, first.stderr
    assert first.json["changed"] is True
    assert first.json["sha256"] == local_sha
    assert secret_sha(secrets, secret_name) == local_sha
    assert secrets.describe_secret(SecretId=secret_name)["VersionIdsToStages"] == {
        first.json["versionId"]: ["AWSCURRENT"]
    }

    second = node.run("upload-munge-key.sh", "--secret-id", secret_name, "--region", REGION)

    assert second.returncode == 0, second.stderr
    assert second.json == {"ok": True, "changed": False, "sha256": local_sha, "versionId": first.json["versionId"]}
    assert len(secrets.list_secret_version_ids(SecretId=secret_name)["Versions"]) == 1


def test_upload_refuses_to_overwrite_a_different_key(node, secrets, secret_name):
    other = new_key()
    version = put_key(secrets, secret_name, other)

    result = node.run("upload-munge-key.sh", "--secret-id", secret_name, "--region", REGION)

    assert result.returncode == 1
    assert result.json["ok"] is False and result.json["changed"] is False
    assert "different munge key" in result.json["error"]
    assert secret_sha(secrets, secret_name) == sha256(other)
    assert [v["VersionId"] for v in secrets.list_secret_version_ids(SecretId=secret_name)["Versions"]] == [version]


def test_upload_refuses_a_value_that_is_not_a_munge_key(node, secrets, secret_name):
    secrets.put_secret_value(SecretId=secret_name, SecretString='{"user": "x"}')
    result = node.run("upload-munge-key.sh", "--secret-id", secret_name, "--region", REGION)
    assert result.returncode == 1
    assert "not a munge key" in result.json["error"]


def test_upload_fails_clearly_when_the_secret_does_not_exist(node):
    result = node.run("upload-munge-key.sh", "--secret-id", "slurm-multicluster/missing", "--region", REGION)
    assert result.returncode == 1
    assert "cannot read the secret" in result.json["error"]


# ---------------------------------------------------------------- install-munge-key.sh


@pytest.fixture
def federation_key(secrets, secret_name) -> bytes:
    key = new_key()
    put_key(secrets, secret_name, key)
    return key


def test_install_writes_the_key_0400_and_the_shared_copy_and_restarts(node, secret_name, federation_key):
    old_sha = file_sha(node.key_file)
    new_sha = sha256(federation_key)
    node.set_unit("slurmd", state="active")  # listed but this head node's daemons decide what restarts

    result = install(node, secret_name, new_sha, "--shared-dirs", "--restart", "slurmctld,slurmdbd")

    assert result.returncode == 0, result.stderr
    assert result.json == {
        "ok": True, "changed": True, "sha256": new_sha, "previousSha256": old_sha,
        "restarted": ["munge", "slurmdbd", "slurmctld"],
        "sharedFiles": [str(node.shared_dir / ".munge.key")], "source": "secret", "prunedBackups": [],
    }
    assert file_sha(node.key_file) == new_sha
    assert mode_owner(node.key_file) == (0o400, "munge")
    shared = node.shared_dir / ".munge.key"
    assert file_sha(shared) == new_sha
    assert mode_owner(shared) == (0o600, "root")  # as ParallelCluster shares it
    assert not node.login_shared_dir.exists()  # only existing shared dirs are written
    # the backup holds the previous key with its mode and owner
    backup = node.backup_copy("exec-1", node.key_file)
    assert file_sha(backup) == old_sha
    assert mode_owner(backup) == (0o600, "munge")
    assert node.manifest("exec-1") == [str(shared), str(node.key_file)]
    assert node.systemctl_actions() == [("restart", "munge"), ("restart", "slurmdbd"), ("restart", "slurmctld")]
    assert node.munge_roundtrip_ok()  # the real munged runs with the new key
    assert list((node.root / "tmp").iterdir()) == []  # the private temp dir is gone


def test_install_second_run_is_a_no_op(node, secret_name, federation_key):
    new_sha = sha256(federation_key)
    assert install(node, secret_name, new_sha, "--shared-dirs", "--restart", "slurmctld").returncode == 0
    node.clear_calls()
    before = node.snapshot()

    result = install(node, secret_name, new_sha, "--shared-dirs", "--restart", "slurmctld")

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is False
    assert result.json["restarted"] == []
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_install_refuses_a_fingerprint_mismatch_and_changes_nothing(node, secret_name, federation_key):
    before = node.snapshot()

    result = install(node, secret_name, "0" * 64, "--shared-dirs", "--restart", "slurmctld")

    assert result.returncode == 1
    assert result.json["ok"] is False and result.json["changed"] is False
    assert "fingerprint mismatch" in result.json["error"]
    assert node.snapshot() == before
    assert node.systemctl_actions() == []
    assert not node.backup_root.exists()


@pytest.mark.parametrize("size", [16, 31, 1025])
def test_install_refuses_a_key_of_the_wrong_size(node, secrets, secret_name, size):
    key = new_key(size)
    put_key(secrets, secret_name, key)
    before = node.snapshot()

    result = install(node, secret_name, sha256(key), "--shared-dirs")

    assert result.returncode == 1
    assert "32..1024 bytes" in result.json["error"]
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_install_refuses_a_secret_that_is_not_base64(node, secrets, secret_name):
    secrets.put_secret_value(SecretId=secret_name, SecretString="not base64 at all!")
    before = node.snapshot()
    result = install(node, secret_name, "a" * 64)
    assert result.returncode == 1
    assert "base64" in result.json["error"]
    assert node.snapshot() == before


def test_install_reads_the_requested_version_stage(node, secrets, secret_name, federation_key):
    pending = new_key()
    secrets.put_secret_value(
        SecretId=secret_name, SecretString=base64.b64encode(pending).decode(), VersionStages=["AWSPENDING"]
    )
    result = install(node, secret_name, sha256(pending), "--version-stage", "AWSPENDING")
    assert result.returncode == 0, result.stderr
    assert file_sha(node.key_file) == sha256(pending)


def test_install_rolls_back_when_slurmctld_does_not_come_back(node, secret_name, federation_key):
    old_key_sha = file_sha(node.key_file)
    before = node.snapshot()
    node.set_unit("slurmctld", fail_restarts=1)

    result = install(node, secret_name, sha256(federation_key), "--shared-dirs", "--restart", "slurmctld", "--deadline", "2")

    assert result.returncode == 1
    assert result.json["ok"] is False
    assert result.json["rolledBack"] is True
    assert file_sha(node.key_file) == old_key_sha
    after = node.snapshot()
    for path in ("etc/munge/munge.key", "opt/parallelcluster/shared/.munge/.munge.key"):
        assert after[path] == before[path]
    assert node.unit_state("slurmctld") == "active"
    assert node.munge_roundtrip_ok()
    assert node.systemctl_actions() == [
        ("restart", "munge"), ("restart", "slurmctld"), ("restart", "munge"), ("restart", "slurmctld"),
    ]


def test_restore_backup_puts_the_previous_key_back_and_restarts_munge(node, secret_name, federation_key):
    old = {p: node.snapshot()[p] for p in ("etc/munge/munge.key", "opt/parallelcluster/shared/.munge/.munge.key")}
    assert install(node, secret_name, sha256(federation_key), "--shared-dirs", "--restart", "slurmctld").returncode == 0
    node.clear_calls()

    result = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert result.returncode == 0, result.stderr
    assert set(result.json["restored"]) == {str(node.key_file), str(node.shared_dir / ".munge.key")}
    assert result.json["restarted"] == ["munge", "slurmdbd", "slurmctld"]
    after = node.snapshot()
    assert {p: after[p] for p in old} == old  # same bytes, mode and owner as before the install
    assert node.munge_roundtrip_ok()
    node.clear_calls()
    assert node.run("restore-backup.sh", "--backup-id", "exec-1").json["changed"] is False
    assert node.systemctl_actions() == []


def test_compute_node_installs_from_the_shared_dir(make_node, federation_key):
    node = make_node()
    node.remove_unit("slurmctld")
    node.remove_unit("slurmdbd")
    node.set_unit("slurmd", state="active")
    node.write_key(node.shared_dir / ".munge.key", federation_key, 0o600)
    new_sha = sha256(federation_key)

    result = node.run(
        "install-munge-key.sh", "--from-shared-dir", "--expect-sha256", new_sha, "--backup-id", "exec-1",
        "--restart", "slurmd",
    )

    assert result.returncode == 0, result.stderr
    assert result.json["source"] == "shared-dir"
    assert result.json["restarted"] == ["munge", "slurmd"]
    assert result.json["sharedFiles"] == []
    assert file_sha(node.key_file) == new_sha
    assert mode_owner(node.key_file) == (0o400, "munge")
    assert node.munge_roundtrip_ok()


def test_compute_node_refuses_a_stale_shared_copy(node, federation_key):
    before = node.snapshot()
    result = node.run(
        "install-munge-key.sh", "--from-shared-dir", "--expect-sha256", sha256(federation_key),
        "--backup-id", "exec-1",
    )
    assert result.returncode == 1
    assert "fingerprint mismatch" in result.json["error"]
    assert node.snapshot() == before


def test_install_does_not_start_a_deliberately_stopped_slurmdbd(node, secret_name, federation_key):
    node.set_unit("slurmdbd", state="inactive")
    result = install(node, secret_name, sha256(federation_key), "--restart", "slurmdbd,slurmctld")
    assert result.returncode == 0, result.stderr
    assert result.json["restarted"] == ["munge", "slurmctld"]
    assert node.unit_state("slurmdbd") == "inactive"


def test_install_refreshes_only_a_stale_shared_copy_without_restarts(node, secret_name, federation_key):
    node.write_key(node.key_file, federation_key, 0o400, *(lambda p: (p.pw_uid, p.pw_gid))(pwd.getpwnam("munge")))
    node.clear_calls()

    result = install(node, secret_name, sha256(federation_key), "--shared-dirs", "--restart", "slurmctld")

    assert result.returncode == 0, result.stderr
    assert result.json["changed"] is True
    assert result.json["restarted"] == []
    assert result.json["sharedFiles"] == [str(node.shared_dir / ".munge.key")]
    assert file_sha(node.shared_dir / ".munge.key") == sha256(federation_key)
    assert node.systemctl_actions() == []


def test_install_creates_a_missing_shared_copy_and_restore_deletes_it(node, secret_name, federation_key):
    node.login_shared_dir.mkdir(parents=True, mode=0o700)
    login_key = node.login_shared_dir / ".munge.key"

    result = install(node, secret_name, sha256(federation_key), "--shared-dirs")

    assert result.returncode == 0, result.stderr
    assert result.json["sharedFiles"] == [str(node.shared_dir / ".munge.key"), str(login_key)]
    assert file_sha(login_key) == sha256(federation_key)
    assert mode_owner(login_key) == (0o600, "root")
    assert f"absent:{login_key}" in node.manifest("exec-1")

    restored = node.run("restore-backup.sh", "--backup-id", "exec-1")

    assert restored.returncode == 0, restored.stderr
    assert str(login_key) in restored.json["restored"]
    assert not login_key.exists()
