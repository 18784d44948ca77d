"""discover-slurm.sh reports the live Slurm settings, the file that holds the accounting lines, and fingerprints."""

from __future__ import annotations

import pytest

from node_fixture import PC_CONF_WITHOUT_ACCOUNTING, file_sha, new_key, sha256


def test_discover_reports_live_values_and_the_parallelcluster_accounting_file(node):
    before = node.snapshot()
    result = node.run("discover-slurm.sh")
    assert result.returncode == 0, result.stderr
    facts = result.json
    assert facts["ok"] is True and facts["changed"] is False
    assert facts["clusterName"] == "alpha"
    assert facts["slurmctldHost"] == "ip-10-0-0-10"
    assert facts["slurmctldAddr"] == "10.0.0.10"
    assert facts["slurmctldPort"] == "6820-6829"
    assert facts["accountingStorageType"] == "accounting_storage/slurmdbd"
    assert facts["accountingStorageHost"] == "ip-10-0-0-10"
    assert facts["accountingStoragePort"] == 6819
    assert facts["accountingFile"] == str(node.etc / "slurm_parallelcluster.conf")
    assert facts["accountingDefinedIn"] == [str(node.etc / "slurm_parallelcluster.conf")]
    assert facts["dbdPort"] == 6819  # from the file slurmdbd.conf includes
    assert facts["slurmdbdUnit"] is True and facts["slurmdbdActive"] is True
    assert facts["slurmctldActive"] is True and facts["mungeActive"] is True
    assert facts["slurmVersion"] == "22.05.8"
    assert facts["slurmdbdVersion"] == "22.05.8"
    assert facts["mungeVersion"] == "0.5.15"
    assert facts["mungeKeySha256"] == file_sha(node.key_file)
    assert facts["configSource"] == "scontrol"
    assert node.snapshot() == before
    assert node.systemctl_actions() == []


def test_discover_without_accounting_points_at_slurm_parallelcluster_conf(make_node):
    node = make_node(pc_conf=PC_CONF_WITHOUT_ACCOUNTING)
    (node.etc / "slurmdbd.conf").unlink()
    node.remove_unit("slurmdbd")
    facts = node.run("discover-slurm.sh").json
    assert facts["accountingStorageType"] == "accounting_storage/none"
    assert facts["accountingStoragePort"] is None
    assert facts["accountingFile"] == str(node.etc / "slurm_parallelcluster.conf")
    assert facts["accountingDefinedIn"] == []
    assert facts["dbdPort"] is None
    assert facts["slurmdbdUnit"] is False and facts["slurmdbdActive"] is False
    assert facts["slurmdbdVersion"] is None


def test_discover_finds_accounting_set_in_the_custom_settings_include(make_node):
    node = make_node(pc_conf=PC_CONF_WITHOUT_ACCOUNTING)
    custom = node.etc / "pcluster/custom_slurm_settings_include_file_slurm.conf"
    custom.write_text("accountingstoragetype = accounting_storage/slurmdbd\nAccountingStorageHost=dbd.example\n")
    facts = node.run("discover-slurm.sh").json
    assert facts["accountingFile"] == str(custom)
    assert facts["accountingDefinedIn"] == [str(custom)]


def test_discover_uses_slurm_conf_when_it_includes_no_parallelcluster_file(node):
    (node.etc / "slurm.conf").write_text("ClusterName=plain\nSlurmctldHost=head\n")
    facts = node.run("discover-slurm.sh").json
    assert facts["accountingFile"] == str(node.etc / "slurm.conf")


def test_discover_reads_the_files_when_slurmctld_is_down(node):
    node.set_unit("slurmctld", state="failed")
    result = node.run("discover-slurm.sh")
    assert result.returncode == 0, result.stderr
    facts = result.json
    assert facts["configSource"] == "files"
    assert facts["slurmctldActive"] is False
    assert facts["clusterName"] == "alpha"
    assert facts["slurmctldHost"] == "ip-10-0-0-10"
    assert facts["accountingStorageHost"] == "ip-10-0-0-10"
    assert facts["accountingStoragePort"] == 6819
    assert facts["slurmVersion"] == "22.05.8"  # from scontrol --version


def test_discover_reports_the_key_fingerprint_only(make_node):
    key = new_key(512)
    node = make_node(key=key)
    facts = node.run("discover-slurm.sh").json  # Node.run fails the test if any key encoding is printed
    assert facts["mungeKeySha256"] == sha256(key)


def test_discover_reports_slurmd_port_and_no_srun_port_range_when_unset(node):
    """scontrol says SrunPortRange = 0-0 when slurm.conf sets none: srun listens on ephemeral ports."""
    facts = node.run("discover-slurm.sh").json
    assert facts["slurmdPort"] == 6818
    assert facts["srunPortRange"] is None


def test_discover_reports_the_live_srun_port_range_set_in_the_custom_settings(node):
    custom = node.etc / "pcluster/custom_slurm_settings_include_file_slurm.conf"
    custom.write_text("SrunPortRange=60001-63000\nSlurmdPort=7818\n")
    assert node.standin("systemctl", "restart", "slurmctld").returncode == 0  # slurmctld reads it at start
    facts = node.run("discover-slurm.sh").json
    assert facts["configSource"] == "scontrol"
    assert facts["srunPortRange"] == "60001-63000"
    assert facts["slurmdPort"] == 7818


def test_discover_reads_srun_port_range_from_the_files_when_slurmctld_is_down(node):
    custom = node.etc / "pcluster/custom_slurm_settings_include_file_slurm.conf"
    custom.write_text("SrunPortRange=60001-63000\n")
    node.set_unit("slurmctld", state="failed")
    facts = node.run("discover-slurm.sh").json
    assert facts["configSource"] == "files"
    assert facts["srunPortRange"] == "60001-63000"
    assert facts["slurmdPort"] == 6818  # slurm.conf's


def test_discover_refuses_a_srun_port_range_that_is_not_low_high(node):
    custom = node.etc / "pcluster/custom_slurm_settings_include_file_slurm.conf"
    custom.write_text("SrunPortRange=63000-60001\n")
    node.set_unit("slurmctld", state="failed")
    result = node.run("discover-slurm.sh")
    assert result.returncode == 1
    assert result.json["ok"] is False and "SrunPortRange" in result.json["error"]


def test_discover_without_slurm_conf_fails(node):
    (node.etc / "slurm.conf").unlink()
    result = node.run("discover-slurm.sh")
    assert result.returncode == 1
    assert result.json["ok"] is False and "slurm.conf" in result.json["error"]


def test_discover_fingerprints_each_shared_copy_the_nodes_boot_from(node):
    """A head node on the federation key whose shared copies hold another (the key copied to the head by hand)."""
    other = new_key()
    node.write_key(node.shared_dir / ".munge.key", other, 0o600)
    node.login_shared_dir.mkdir(parents=True)  # a pool's dir without a key yet
    facts = node.run("discover-slurm.sh").json
    assert facts["sharedMungeKeys"] == [f"{node.shared_dir}/.munge.key={sha256(other)}",
                                        f"{node.login_shared_dir}/.munge.key="]
    assert facts["mungeKeySha256"] == file_sha(node.key_file) != sha256(other)


def test_report_munge_key_says_which_key_a_node_runs_and_changes_nothing(node):
    before = node.snapshot()
    facts = node.run("report-munge-key.sh").json
    assert facts == {"ok": True, "changed": False, "mungeKeySha256": file_sha(node.key_file), "mungeActive": True}
    assert node.snapshot() == before and node.systemctl_actions() == []
    node.key_file.unlink()
    assert node.run("report-munge-key.sh").json["mungeKeySha256"] is None
    refused = node.run("report-munge-key.sh", "--secret-id", "x")
    assert refused.returncode == 2 and refused.json["ok"] is False


# ParallelCluster's fleet-config.json as its cookbook writes it (generate_fleet_config): one entry per queue and
# compute resource; only create-fleet ones carry Networking.SubnetIds (a queue's launch template names the first).
FLEET_CONFIG = """{
  "compute": {
    "c5": {"Api": "create-fleet", "CapacityType": "on-demand", "Instances": [{"InstanceType": "c5.xlarge"}],
           "Networking": {"SubnetIds": ["subnet-0b2222222222222bb", "subnet-0a1111111111111aa"]}},
    "c6": {"Api": "run-instances", "CapacityType": "on-demand", "Instances": [{"InstanceType": "c6i.large"}]}
  },
  "gpu": {
    "g5": {"Api": "create-fleet", "CapacityType": "spot", "Instances": [{"InstanceType": "g5.xlarge"}],
           "Networking": {"SubnetIds": ["subnet-0a1111111111111aa", "subnet-0c3333333333333cc"]}}
  }
}
"""


def test_discover_reports_no_queue_subnets_without_a_fleet_config(node):
    """A head node of an older ParallelCluster, or a plain Slurm head node: no fleet-config.json."""
    assert not node.fleet_config.exists()
    facts = node.run("discover-slurm.sh").json
    assert facts["ok"] is True
    assert facts["queueSubnetIds"] == []


def test_discover_reports_every_queues_subnets_sorted_and_once(node):
    node.fleet_config.parent.mkdir(parents=True)
    node.fleet_config.write_text(FLEET_CONFIG)
    facts = node.run("discover-slurm.sh").json
    assert facts["queueSubnetIds"] == ["subnet-0a1111111111111aa", "subnet-0b2222222222222bb",
                                       "subnet-0c3333333333333cc"]


def test_discover_reads_a_fleet_config_written_on_one_line(node):
    node.fleet_config.parent.mkdir(parents=True)
    node.fleet_config.write_text('{"q":{"cr":{"Api":"create-fleet","Networking":{"SubnetIds":["subnet-0123abcd"]}}}}')
    assert node.run("discover-slurm.sh").json["queueSubnetIds"] == ["subnet-0123abcd"]


@pytest.mark.parametrize("subnet_ids", [
    '["subnet-0a1111111111111aa", "subnet-0a11; touch /tmp/owned"]',  # not a subnet id
    '["sg-0a1111111111111aa"]',  # another kind of id
    '["subnet-0A1111111111111AA"]',  # EC2 ids are lower-case hex
    '"subnet-0a1111111111111aa"',  # not a list
    '["subnet-0a1111111111111aa" "subnet-0b2222222222222bb"]',  # one item of two
    '["subnet-\\u0030a1111111111111aa"]',  # an escape: never decoded, refused
])
def test_discover_refuses_a_fleet_config_naming_anything_but_subnet_ids(node, subnet_ids):
    node.fleet_config.parent.mkdir(parents=True)
    node.fleet_config.write_text('{"q": {"cr": {"Api": "create-fleet", "Networking": {"SubnetIds": %s}}}}' % subnet_ids)
    result = node.run("discover-slurm.sh")
    assert result.returncode == 1
    assert result.json["ok"] is False
    assert str(node.fleet_config) in result.json["error"] and "subnet" in result.json["error"]
    assert "queueSubnetIds" not in result.json
