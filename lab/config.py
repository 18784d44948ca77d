"""Text of the files a ParallelCluster-shaped cluster has: slurm.conf, slurm_parallelcluster.conf,
slurmdbd.conf, /etc/hosts, and the stand-in systemctl's unit table for each node role."""

from __future__ import annotations

SLURM_ETC = "/opt/slurm/etc"
SHARED_DIR = "/opt/parallelcluster/shared"
SHARED_KEY = SHARED_DIR + "/.munge/.munge.key"
# login nodes mount this one instead of SHARED_DIR (ParallelCluster 3.7+: shared_login_nodes)
LOGIN_SHARED_DIR = "/opt/parallelcluster/shared_login_nodes"
LOGIN_SHARED_KEY = LOGIN_SHARED_DIR + "/.munge/.munge.key"
MUNGE_KEY = "/etc/munge/munge.key"
DBD_PORT = 6819
MYSQL_SOCKET = "/run/mysqld/mysqld.sock"
MUNGE_SOCKET = "/run/munge/munge.socket.2"
ACCOUNTING_DB = "slurm_acct_db"


def slurm_conf(cluster: str, computes: list[str]) -> str:
    """slurm.conf as ParallelCluster writes it once at cluster creation (nodes + one partition)."""
    nodes = "\n".join(f"NodeName={n} CPUs=1 State=UNKNOWN" for n in computes)
    return f"""\
# slurm.conf of cluster {cluster}, shaped like the one ParallelCluster writes (written by the lab)
ClusterName={cluster}
SlurmUser=slurm
SlurmctldPort=6820-6829
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurm.state
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/var/run/slurmctld.pid
SlurmdPidFile=/var/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups in the lab's namespaces
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=1
SlurmctldTimeout=300
SlurmdTimeout=180
{nodes}
PartitionName=queue1 Nodes=ALL Default=YES MaxTime=INFINITE State=UP
include slurm_parallelcluster.conf
include pcluster/custom_slurm_settings_include_file_slurm.conf
"""


def slurm_parallelcluster_conf(cluster: str, head: str, head_ip: str, accounting: bool) -> str:
    """The file ParallelCluster regenerates on every update: controller and, with a Database, accounting."""
    text = f"""\
# slurm_parallelcluster.conf of cluster {cluster} (ParallelCluster regenerates this file on update)
SlurmctldHost={head}({head_ip})
"""
    if accounting:
        text += f"""\
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={head}
AccountingStoragePort={DBD_PORT}
"""
    return text


def slurmdbd_conf(head: str, db_password: str) -> str:
    """slurmdbd.conf of the accounting head node (must be 0600 and owned by SlurmUser)."""
    return f"""\
# slurmdbd.conf (written by the lab)
AuthType=auth/munge
DbdHost={head}
DbdPort={DBD_PORT}
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/var/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass={db_password}
StorageLoc={ACCOUNTING_DB}
"""


def hosts_file(entries: list[tuple[str, str]]) -> str:
    """/etc/hosts shared by every node of a lab: every node resolves every other, across clusters."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", ""]
    lines += [f"{ip}\t{name}" for name, ip in entries]
    return "\n".join(lines) + "\n"


def units(role: str, accounting: bool) -> dict:
    """Unit table of the stand-in systemctl: what each unit runs and how it is ready/stopped."""
    table = {
        "munge": {
            "exec": ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "/usr/sbin/munged", "-F"],
            "log": "/var/log/munge/munged.out",
            "runtime_dirs": [["/run/munge", "munge:munge", "0755"]],
            # munge.service is Type=forking: `start` returns once the socket answers
            "ready_socket": MUNGE_SOCKET,
            "stop_timeout": 5,
        }
    }
    if role == "head":
        if accounting:
            table["mariadb"] = {
                "exec": ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", "--datadir=/var/lib/mysql",
                         f"--socket={MYSQL_SOCKET}", "--pid-file=/run/mysqld/mysqld.pid", "--skip-networking",
                         "--innodb-buffer-pool-size=64M", "--skip-log-bin"],
                "log": "/var/log/mysql/error.log",
                # Debian sid's MariaDB 11.8 clients (slurmdbd's too) look for /run/mariadbd/mysqld.sock, older
                # ones for /run/mysqld/mysqld.sock: the socket is at the old path, a link at the new one
                "runtime_dirs": [["/run/mysqld", "mysql:mysql", "0755"], ["/run/mariadbd", "mysql:mysql", "0755"]],
                "runtime_links": [["/run/mariadbd/mysqld.sock", MYSQL_SOCKET]],
                "ready_socket": MYSQL_SOCKET,
                "start_timeout": 60,
                "stop_timeout": 30,
            }
            table["slurmdbd"] = {"exec": ["/usr/sbin/slurmdbd", "-D", "-s"], "log": "/var/log/slurm/slurmdbd.out",
                                 "stop_timeout": 10}
        table["slurmctld"] = {"exec": ["/usr/sbin/slurmctld", "-D", "-s"], "log": "/var/log/slurm/slurmctld.out",
                              "stop_timeout": 10}
    elif role == "compute":
        # slurmd.service has KillMode=process: stopping slurmd leaves the jobs' processes running
        table["slurmd"] = {"exec": ["/usr/sbin/slurmd", "-D", "-s"], "log": "/var/log/slurm/slurmd.out",
                           "stop_timeout": 3, "kill_mode": "process"}
    return table


def boot_order(role: str, accounting: bool) -> list[str]:
    """Units in the order a node starts them at boot."""
    if role == "compute":
        return ["munge", "slurmd"]
    if role == "login":
        return ["munge"]
    return ["munge", "mariadb", "slurmdbd", "slurmctld"] if accounting else ["munge", "slurmctld"]
