"""The lab's clusters behave like freshly created, unpaired ParallelCluster clusters, with real daemons."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from lab_helpers import LAB_NAME, REPO, sha256, submit, wait_job_completed, wait_until

from lab import Lab, LabError

pytestmark = pytest.mark.lab


def test_nodes_have_their_own_hostname_address_and_hosts_file(lab):
    assert [n.name for n in lab.nodes] == [
        "alpha-head", "alpha-compute-1", "alpha-compute-2", "beta-head", "beta-compute-1"]
    assert lab.head("beta").ip == "10.250.77.21"
    assert lab.bridge_ip == "10.250.77.1"
    assert [n.name for n in lab.computes("alpha")] == ["alpha-compute-1", "alpha-compute-2"]
    assert lab.node("alpha-compute-2").spare and not lab.node("alpha-compute-1").spare
    for n in lab.nodes:
        out = lab.sh(n.name, "hostname; ip -o -4 addr show dev eth0").stdout
        assert out.splitlines()[0] == n.hostname
        assert f"inet {n.ip}/24" in out
    # cross-cluster name resolution (AccountingStorageHost=alpha-head must resolve on beta)
    assert lab.exec("beta-head", ["getent", "hosts", "alpha-head"]).stdout.split()[0] == lab.head("alpha").ip
    # the network is only the lab's /24: no default route out
    assert "default" not in lab.exec("beta-head", ["ip", "route"]).stdout
    assert os.path.exists(lab.netns_path("bridge")) and lab.netns_path("bridge").endswith(f"{LAB_NAME}-br")


def test_parallelcluster_file_layout(lab):
    conf = lab.exec("alpha-head", ["cat", "/opt/slurm/etc/slurm.conf"]).stdout
    for line in ("ClusterName=alpha", "SlurmctldPort=6820-6829", "SlurmdPort=6818", "AuthType=auth/munge",
                 "StateSaveLocation=/var/spool/slurm.state", "ProctrackType=proctrack/linuxproc"):
        assert line in conf.splitlines()
    assert "include slurm_parallelcluster.conf" in conf
    assert lab.exec("alpha-head", ["cat", "/etc/slurm/slurm.conf"]).stdout == conf
    pc_alpha = lab.exec("alpha-head", ["cat", "/opt/slurm/etc/slurm_parallelcluster.conf"]).stdout.splitlines()
    assert "AccountingStorageType=accounting_storage/slurmdbd" in pc_alpha
    assert "AccountingStorageHost=alpha-head" in pc_alpha and "AccountingStoragePort=6819" in pc_alpha
    assert f"SlurmctldHost=alpha-head({lab.head('alpha').ip})" in pc_alpha
    pc_beta = lab.exec("beta-head", ["cat", "/opt/slurm/etc/slurm_parallelcluster.conf"]).stdout
    assert "Accounting" not in pc_beta and "SlurmctldHost=beta-head(" in pc_beta
    assert lab.exec("alpha-head", ["stat", "-c", "%a %U", "/opt/slurm/etc/slurmdbd.conf"]).stdout.split() == [
        "600", "slurm"]
    assert lab.exec("beta-head", ["test", "-e", "/opt/slurm/etc/slurmdbd.conf"]).returncode == 1
    for node in ("alpha-head", "beta-head"):
        for key in ("/etc/munge/munge.key", "/opt/parallelcluster/shared/.munge/.munge.key"):
            assert lab.exec(node, ["stat", "-c", "%a %U:%G %s", key]).stdout.split() == ["400", "munge:munge", "1024"]
    # compute nodes see the head's /opt/slurm/etc and shared dir, as over NFS; /tmp stays per node
    lab.exec("alpha-head", ["touch", "/opt/slurm/etc/lab-test-marker", "/tmp/lab-test-marker"], check=True)
    try:
        assert lab.exec("alpha-compute-1", ["test", "-e", "/opt/slurm/etc/lab-test-marker"]).returncode == 0
        assert lab.exec("alpha-compute-1", ["test", "-e", "/tmp/lab-test-marker"]).returncode == 1
        assert lab.exec("beta-head", ["test", "-e", "/opt/slurm/etc/lab-test-marker"]).returncode == 1
    finally:
        lab.exec("alpha-head", ["rm", "-f", "/opt/slurm/etc/lab-test-marker", "/tmp/lab-test-marker"])
    assert sha256(lab, "alpha-compute-1", "/etc/munge/munge.key") == sha256(lab, "alpha-head", "/etc/munge/munge.key")


@pytest.mark.parametrize("cluster", ["alpha", "beta"])
def test_each_cluster_runs_its_own_job(lab, cluster):
    head = lab.head(cluster).name
    job = submit(lab, head, "--chdir=/tmp", "--output=/tmp/job-%j.out", "--wrap", "hostname")
    fields = wait_job_completed(lab, head, job)
    compute = f"{cluster}-compute-1"
    assert fields["NodeList"] == compute and fields["ExitCode"] == "0:0"
    # the output file is on the compute node's own /tmp
    assert lab.exec(compute, ["cat", f"/tmp/job-{job}.out"]).stdout.strip() == compute


def test_clusters_are_separate_before_pairing(lab):
    cred = lab.exec("alpha-head", ["munge", "-n"], check=True).stdout
    assert lab.exec("alpha-head", ["unmunge"], input=cred).returncode == 0
    decoded = lab.exec("beta-head", ["unmunge"], input=cred)
    assert decoded.returncode != 0 and "Invalid credential" in decoded.stderr
    cross = lab.exec("beta-head", ["sbatch", "--clusters=alpha", "--wrap", "hostname"])
    assert cross.returncode != 0, cross.stdout
    assert sha256(lab, "alpha-head", "/etc/munge/munge.key") != sha256(lab, "beta-head", "/etc/munge/munge.key")


def test_sacctmgr_lists_the_accounting_cluster_with_its_control_host(lab):
    rows = lab.exec("alpha-head", ["sacctmgr", "-nP", "show", "clusters", "format=cluster,controlhost,controlport"],
                    check=True).stdout.split()
    assert f"alpha|{lab.head('alpha').ip}|6820" in rows
    assert not any(r.startswith("beta|") for r in rows)


def test_systemctl_restart_slurmctld_gives_a_new_process_that_answers(lab):
    before = lab.systemctl("alpha-head", "show", "-p", "MainPID", "--value", "slurmctld").stdout.strip()
    assert lab.systemctl("alpha-head", "restart", "slurmctld.service").returncode == 0
    after = lab.systemctl("alpha-head", "show", "-p", "MainPID", "--value", "slurmctld").stdout.strip()
    assert after not in ("0", before)
    assert lab.systemctl("alpha-head", "is-active", "slurmctld").stdout.strip() == "active"
    assert "is UP" in lab.wait_slurmctld("alpha")
    # sinfo shows the node idle from saved state at once, but jobs wait until slurmd re-registers (4-10 s
    # by itself): restart it too, as a pairing does, so the next tests' jobs start at once
    assert lab.systemctl("alpha-compute-1", "restart", "slurmd").returncode == 0
    lab.wait_idle(["alpha-compute-1"])


def test_systemctl_on_a_head_without_database(lab):
    assert lab.exec("beta-head", ["systemctl", "show", "-p", "LoadState", "--value", "slurmdbd"]).stdout == "not-found\n"
    assert lab.exec("beta-head", ["systemctl", "show", "-p", "LoadState", "--value", "slurmctld"]).stdout == "loaded\n"
    restart = lab.exec("beta-head", ["systemctl", "restart", "slurmdbd"])
    assert restart.returncode == 5 and "Unit slurmdbd.service not found." in restart.stderr
    active = lab.exec("beta-head", ["systemctl", "is-active", "slurmdbd"])
    assert active.returncode in (3, 4) and active.stdout == "inactive\n"
    assert lab.exec("beta-head", ["systemctl", "is-active", "munge"]).stdout == "active\n"


def test_systemctl_kill_disable_and_start_slurmd(lab):
    node = "beta-compute-1"
    assert lab.exec(node, ["systemctl", "is-enabled", "slurmd"]).stdout == "enabled\n"
    assert lab.exec(node, ["systemctl", "disable", "slurmd"]).returncode == 0
    assert lab.exec(node, ["systemctl", "is-enabled", "slurmd"]).returncode == 1
    assert lab.exec(node, ["systemctl", "enable", "slurmd"]).returncode == 0
    assert lab.exec(node, ["systemctl", "kill", "-s", "SIGKILL", "slurmd"]).returncode == 0
    wait_until(lambda: lab.exec(node, ["systemctl", "is-active", "slurmd"]).stdout == "failed\n", 10,
               "killed slurmd reported failed")
    assert lab.exec(node, ["systemctl", "start", "slurmd"]).returncode == 0
    assert lab.exec(node, ["systemctl", "is-active", "--quiet", "slurmd"]).returncode == 0
    lab.wait_idle([node])


def test_boot_of_a_spare_compute_copies_the_shared_key_and_becomes_idle(lab):
    node = "alpha-compute-2"
    assert not lab.is_booted(node)
    assert lab.exec(node, ["test", "-e", "/etc/munge/munge.key"]).returncode == 1
    assert lab.node_states("alpha")[node].startswith(("unknown", "down", "idle*"))
    lab.boot(node)
    shared = sha256(lab, "alpha-head", "/opt/parallelcluster/shared/.munge/.munge.key")
    assert sha256(lab, node, "/etc/munge/munge.key") == shared
    assert lab.node_states("alpha")[node] == "idle"
    job = submit(lab, "alpha-head", "--nodelist", node, "--chdir=/tmp", "--wrap", "true")
    assert wait_job_completed(lab, "alpha-head", job)["NodeList"] == node
    assert Lab.load(LAB_NAME, root=lab.root).is_booted(node)


def test_exec_passes_exit_code_env_input_and_cwd(lab):
    assert lab.sh("beta-head", "exit 7").returncode == 7
    assert lab.exec("beta-head", ["sh", "-c", 'echo "$GREETING"'], env={"GREETING": "hi"}).stdout == "hi\n"
    assert lab.exec("beta-head", ["cat"], input="text in").stdout == "text in"
    assert lab.exec("beta-head", ["wc", "-c"], input=bytes(range(256))).stdout.strip() == "256"
    assert lab.exec("beta-head", ["pwd"], cwd="/var/log/slurm").stdout == "/var/log/slurm\n"
    path = lab.sh("beta-head", "command -v systemctl; command -v aws; echo $PATH").stdout.splitlines()
    assert path[0] == str(lab.bin_dir / "systemctl") and path[1] == str(lab.bin_dir / "aws")
    assert path[2].startswith(f"{lab.bin_dir}:/opt/slurm/bin:") and ":/usr/sbin:" in path[2]
    with pytest.raises(subprocess.TimeoutExpired):
        lab.exec("beta-head", ["sleep", "5"], timeout=0.3)
    with pytest.raises(LabError):
        lab.exec("no-such-node", ["true"])


def test_aws_wrapper_runs_the_repo_cli(lab):
    if not (REPO / ".venv" / "bin" / "aws").exists():
        pytest.skip("no .venv/bin/aws in this checkout")
    cp = lab.exec("beta-head", ["aws", "--version"])
    assert cp.returncode == 0 and "aws-cli/" in cp.stdout + cp.stderr


def test_a_socket_in_the_bridge_namespace_is_reachable_from_nodes(lab):
    """The seam the AWS bridge uses: bind a server socket in the bridge netns (setns in a thread)."""
    bound = {}

    def serve():
        with open(lab.netns_path("bridge")) as ns:
            os.setns(ns.fileno(), os.CLONE_NEWNET)
        srv = socket.create_server((lab.bridge_ip, 0))
        bound["port"] = srv.getsockname()[1]
        ready.set()
        srv.settimeout(20)
        conn, peer = srv.accept()
        bound["data"], bound["peer"] = conn.recv(100), peer[0]
        conn.close()
        srv.close()

    ready = threading.Event()
    t = threading.Thread(target=serve)
    t.start()  # the thread ends with the connection: its namespace switch dies with it
    assert ready.wait(10)
    cp = lab.exec("beta-compute-1", ["bash", "-c", f"echo hello > /dev/tcp/{lab.bridge_ip}/{bound['port']}"])
    t.join(20)
    assert cp.returncode == 0, cp.stderr
    assert bound["data"] == b"hello\n" and bound["peer"] == lab.node("beta-compute-1").ip


def test_state_is_shared_with_other_processes_and_the_cli(lab):
    loaded = Lab.load(LAB_NAME, root=lab.root)
    assert loaded.nodes == lab.nodes and loaded.bridge_ip == lab.bridge_ip
    assert loaded.exec("alpha-head", ["hostname"]).stdout == "alpha-head\n"
    env = dict(os.environ, LAB_ROOT=str(lab.root))
    run = lambda *args: subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, env=env,
                                       capture_output=True, text=True, timeout=60)
    status = run("status", "--name", LAB_NAME)
    assert status.returncode == 0, status.stderr
    assert "beta-head" in status.stdout and "slurmctld=active" in status.stdout and "idle" in status.stdout
    assert run("exec", "--name", LAB_NAME, "beta-head", "--", "sh", "-c", "exit 3").returncode == 3
    sinfo = run("exec", "--name", LAB_NAME, "beta-head", "--", "sinfo", "-h", "-o", "%T")
    assert sinfo.returncode == 0 and "idle" in sinfo.stdout
