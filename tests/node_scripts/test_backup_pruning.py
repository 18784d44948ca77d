"""Backups of old keys and configs are pruned after a successful change (issue 9): a node keeps the newest N backup
sets (--keep-backups, default 3), never the set of the run itself and never one a run still in flight may restore,
so old munge keys (an evicted cluster's, too) do not stay on disk forever."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from lab.cloud import load_template
from node_fixture import REPO, SCRIPTS, file_sha, new_key, sha256

IN_FLIGHT_HOURS = 14  # common.sh's BACKUP_IN_FLIGHT_SECONDS


def share_new_key(node) -> str:
    """A new federation key in the head node's shared munge dir, where compute nodes install it from."""
    key = new_key()
    (node.shared_dir / ".munge.key").write_bytes(key)
    return sha256(key)


def install_from_shared_dir(node, sha: str, *extra: str, backup_id: str):
    return node.run("install-munge-key.sh", "--from-shared-dir", "--expect-sha256", sha, "--backup-id", backup_id,
                    *extra)


def end_long_ago(node, *backup_ids: str) -> None:
    """Make earlier runs' backup sets look as if those runs ended hours past the in-flight window, oldest first."""
    for age, backup_id in enumerate(reversed(backup_ids), start=IN_FLIGHT_HOURS + 1):
        manifest = node.backup_root / backup_id / "manifest"
        if manifest.exists():  # not pruned yet
            then = time.time() - age * 3600
            os.utime(manifest, (then, then))


def backup_sets(node) -> list[str]:
    return sorted(p.name for p in node.backup_root.iterdir() if p.is_dir())


def keys_held_in_backups(node) -> set[str]:
    return {file_sha(p) for p in node.backup_root.rglob("*") if p.is_file() and p.name not in ("manifest", ".lock")}


def test_after_n_plus_two_installs_only_the_newest_n_backup_sets_remain(node):
    keys = [file_sha(node.key_file)]
    for run in range(1, 6):  # the default N = 3, plus 2
        end_long_ago(node, *(f"exec-{earlier}" for earlier in range(1, run)))
        keys.append(share_new_key(node))
        result = install_from_shared_dir(node, keys[-1], backup_id=f"exec-{run}")
        assert result.returncode == 0, result.stderr

    assert result.json["prunedBackups"] == ["exec-2"]  # exec-1 went with the fourth install
    assert backup_sets(node) == ["exec-3", "exec-4", "exec-5"]
    assert keys_held_in_backups(node) == {keys[2], keys[3], keys[4]}  # the two oldest keys are gone from disk
    # the newest set is intact: restoring it puts back the key its install replaced
    restored = node.run("restore-backup.sh", "--backup-id", "exec-5")
    assert restored.returncode == 0, restored.stderr
    assert file_sha(node.key_file) == keys[4] and node.munge_roundtrip_ok()


def test_backups_of_runs_that_may_still_roll_back_are_never_pruned(node):
    for run in range(1, 6):  # five runs within minutes: any of them may still be rolling back
        result = install_from_shared_dir(node, share_new_key(node), backup_id=f"exec-{run}")
        assert result.returncode == 0, result.stderr
        assert result.json["prunedBackups"] == []

    assert backup_sets(node) == [f"exec-{run}" for run in range(1, 6)]
    assert "keeping backup exec-1" in result.stderr


def test_the_runs_own_backup_is_kept_whatever_n_is_and_set_accounting_prunes_too(node):
    for run, port in enumerate(("6900", "6901", "6902"), start=1):
        end_long_ago(node, *(f"exec-{earlier}" for earlier in range(1, run)))
        result = node.run("set-accounting.sh", "--host", "10.0.1.20", "--port", port, "--backup-id", f"exec-{run}",
                          "--keep-backups", "1")
        assert result.returncode == 0, result.stderr

    assert result.json["prunedBackups"] == ["exec-2"]
    assert backup_sets(node) == ["exec-3"]
    assert node.run("restore-backup.sh", "--backup-id", "exec-3").returncode == 0
    assert "AccountingStoragePort=6901" in (node.etc / "slurm_parallelcluster.conf").read_text()


def test_a_failed_change_prunes_nothing(node):
    for run in range(1, 5):
        assert install_from_shared_dir(node, share_new_key(node), backup_id=f"exec-{run}").returncode == 0
    end_long_ago(node, "exec-1", "exec-2", "exec-3", "exec-4")
    node.set_unit("slurmctld", fail_restarts=1)

    result = install_from_shared_dir(node, share_new_key(node), "--restart", "slurmctld", "--deadline", "2",
                                     backup_id="exec-5")

    assert result.returncode == 1 and result.json["rolledBack"] is True
    assert backup_sets(node) == ["exec-1", "exec-2", "exec-3", "exec-4", "exec-5"]


def test_pruning_deletes_the_staged_key_of_an_abandoned_rotation(node):
    pending = new_key()
    (node.shared_dir / ".munge.key.pending").write_bytes(pending)
    staged = node.run("stage-munge-key.sh", "--from-shared-dir", "--expect-sha256", sha256(pending),
                      "--backup-id", "rot-abandoned")
    assert staged.returncode == 0, staged.stderr
    (node.shared_dir / ".munge.key.pending").unlink()
    end_long_ago(node, "rot-abandoned")

    result = install_from_shared_dir(node, share_new_key(node), "--keep-backups", "1", backup_id="exec-1")

    assert result.returncode == 0, result.stderr
    assert result.json["prunedBackups"] == ["rot-abandoned"]
    state_dir = node.backup_root.parent
    assert sha256(pending) not in {file_sha(p) for p in state_dir.rglob("*") if p.is_file()}
    assert not (state_dir / "staged" / "rot-abandoned").exists()


def test_nothing_but_backup_sets_is_pruned(node):
    stray = node.backup_root / "not a backup"  # not a backup id: not ours to delete
    stray.mkdir(parents=True)
    (stray / "manifest").write_text("")
    end_long_ago(node, "not a backup")

    result = install_from_shared_dir(node, share_new_key(node), "--keep-backups", "1", backup_id="exec-1")

    assert result.returncode == 0, result.stderr
    assert result.json["prunedBackups"] == [] and stray.is_dir()


@pytest.mark.parametrize("value", ["0", "100", "3x", "-1", "", "1 2"])
def test_keep_backups_out_of_range_is_refused_and_changes_nothing(node, value):
    sha = share_new_key(node)
    before = node.snapshot()
    result = install_from_shared_dir(node, sha, "--keep-backups", value, backup_id="exec-1")
    assert result.returncode == 2
    assert "--keep-backups" in result.json["error"]
    assert node.snapshot() == before


def test_the_in_flight_window_outlasts_every_workflow_that_changes_nodes():
    """A backup can be restored only by the run that made it, which ends within its workflow's TimeoutSeconds."""
    common = (SCRIPTS / "common.sh").read_text()
    window = int(re.search(r"^BACKUP_IN_FLIGHT_SECONDS=(\d+)$", common, re.M)[1])
    assert window == IN_FLIGHT_HOURS * 3600
    resources = load_template()["Resources"]
    node_changing = {name for name, r in resources.items()
                     if {"Ref": "NodeCommandPolicy"} in r.get("Properties", {}).get("Policies", [])}
    timeouts = {}
    for name, machine in resources.items():
        if machine["Type"] != "AWS::Serverless::StateMachine":
            continue
        substitutions = json.dumps(machine["Properties"].get("DefinitionSubstitutions", {}))
        if any(f'"{function}"' in substitutions or f'"{function}.Arn"' in substitutions for function in node_changing):
            definition = json.loads((REPO / machine["Properties"]["DefinitionUri"]).read_text())
            timeouts[name] = definition["TimeoutSeconds"]
    assert {"PairingStateMachine", "RotationStateMachine", "UnpairingStateMachine"} <= set(timeouts)
    assert max(timeouts.values()) <= window, timeouts
