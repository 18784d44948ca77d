"""CheckPrerequisites: each failure tells the admin what to fix, and nothing is planned past it."""

from __future__ import annotations

import pytest

from slurm_multicluster.errors import PrerequisiteFailed
from slurm_multicluster.models import HeadNode, Member, PairingRequest, SlurmSettings
from slurm_multicluster.pairing import check_prerequisites

REQUEST = PairingRequest(action="pair", stack_name="beta", region="us-east-1", trigger="manual", execution_name="e1")


def _member(name, accounting=False, version="23.11.10", dbd_version=None, slurm_name=None, dbd_active=True):
    return Member(
        cluster_name=name, stack_id=f"arn:{name}", region="us-east-1", federation="hpc", is_accounting=accounting,
        head_node=HeadNode(instance_id="i-0123456789abcdef0", private_ip="10.0.0.1", security_group_ids=["sg-0123456789abcdef0"], vpc_id="vpc-1"),
        slurm=SlurmSettings(cluster_name=slurm_name or name, slurmctld_port="6820-6829", slurm_version=version,
                            slurmdbd_version=dbd_version if accounting else None, dbd_port=6819 if accounting else None,
                            slurmdbd_active=accounting and dbd_active, munge_key_sha256="a" * 64),
    )


def test_a_healthy_federation_passes_every_check():
    passed = check_prerequisites(REQUEST, [_member("alpha", accounting=True, dbd_version="23.11.10"), _member("beta")])
    assert any("accounting cluster: alpha" in line for line in passed)


@pytest.mark.parametrize("members, says", [
    ([_member("beta")], "its accounting cluster \\(the registry's accountingStackArn\\) is not a live, tagged stack"),
    ([_member("alpha", True, version="23.02.7", dbd_version="23.02.7"), _member("beta", version="23.11.10")],
     "slurmdbd must be the same or a newer release than every slurmctld"),
    ([_member("alpha", True, dbd_version="23.11.10"), _member("beta", slurm_name="alpha")],
     "ClusterName alpha is already used"),
    ([_member("alpha", True, dbd_version="23.11.10", dbd_active=False), _member("beta")],
     "runs no active slurmdbd"),
    ([_member("alpha", True, dbd_version="23.11.10"), _member("beta", slurm_name="b" * 41)],
     "longer than 40 characters"),
])
def test_each_broken_prerequisite_is_named(members, says):
    with pytest.raises(PrerequisiteFailed, match=says):
        check_prerequisites(REQUEST, members)


def test_a_cluster_name_held_by_another_live_slurmctld_is_refused():
    alpha = _member("alpha", accounting=True, dbd_version="23.11.10")
    alpha.slurm.registered_clusters = ["alpha=10.0.0.1", "beta=10.9.9.9"]  # an older, still running "beta"
    with pytest.raises(PrerequisiteFailed, match="already registered .* at 10.9.9.9"):
        check_prerequisites(REQUEST, [alpha, _member("beta")])


def test_a_cluster_name_left_by_a_deleted_cluster_is_reused():
    alpha = _member("alpha", accounting=True, dbd_version="23.11.10")
    alpha.slurm.registered_clusters = ["alpha=10.0.0.1", "beta="]  # no ControlHost: nothing is running there
    check_prerequisites(REQUEST, [alpha, _member("beta")])


def test_verification_skips_members_not_yet_paired():
    from slurm_multicluster.pairing import verification_peers

    alpha = _member("alpha", accounting=True, dbd_version="23.11.10")
    alpha.slurm.registered_clusters = ["alpha=10.0.0.1", "gamma=10.0.0.3", "delta="]
    members = [alpha, _member("beta"), _member("gamma"), _member("delta"), _member("epsilon")]
    # epsilon was created at the same moment and waits for its own pairing; delta's slurmctld is gone.
    assert verification_peers(members[1], alpha, members) == ["alpha", "gamma"]


@pytest.mark.parametrize("dbd, member", [
    ("24.11.5", "24.11.5"), ("26.05.5", "24.11.5"), ("24.11.5", "23.02.7"), ("25.11.1", "24.05.8"),
    ("23.11.10", "22.05.8"), ("24.11.6", "24.11.5"),
])
def test_members_inside_schedmds_release_window_pass(dbd, member):
    passed = check_prerequisites(REQUEST, [_member("alpha", True, version=dbd, dbd_version=dbd),
                                           _member("beta", version=member)])
    assert any(f"slurmdbd {dbd} accepts every member" in line for line in passed)


@pytest.mark.parametrize("dbd, member, says", [
    # 24.11 accepts three older major releases: 24.05, 23.11, 23.02 (not 22.05)
    ("24.11.5", "22.05.8", r"beta cannot use the federation's slurmdbd on alpha: slurmctld 22.05.8 is 4 major "
                           r"releases older than slurmdbd 24.11.5; slurmdbd 24.11 accepts at most 3 older major "
                           r"releases \(oldest: 23.02\)"),
    # before 24.11: two
    ("23.11.10", "21.08.8", r"slurmdbd 23.11 accepts at most 2 older major releases \(oldest: 22.05\)"),
    ("24.11.5", "26.05.5", r"slurmctld 26.05.5 is newer than slurmdbd 24.11.5"),
    ("24.11.5", "24.11.6", r"slurmctld 24.11.6 is newer than slurmdbd 24.11.5"),
    ("24.11.5", "19.05.1", r"Slurm 19.05 is not a major release this tool knows"),
    ("24.11.5", "garbage", r"'garbage' is not a Slurm version"),
])
def test_members_outside_the_release_window_are_refused_naming_rule_and_versions(dbd, member, says):
    with pytest.raises(PrerequisiteFailed, match=says):
        check_prerequisites(REQUEST, [_member("alpha", True, version=dbd, dbd_version=dbd),
                                      _member("beta", version=member)])


def _srun(member, value):
    member.slurm.srun_port_range = value
    return member


def test_srun_port_range_off_checks_nothing_about_srun():
    from slurm_multicluster.settings import Settings
    members = [_srun(_member("alpha", True, dbd_version="23.11.10"), "50000-51000"), _member("beta")]
    passed = check_prerequisites(REQUEST, members, Settings(srun_port_range=""))
    assert not any("SrunPortRange" in line for line in passed)


def test_srun_port_range_on_requires_every_member_to_run_exactly_it():
    from slurm_multicluster.settings import Settings
    config = Settings(srun_port_range="60001-63000")
    alpha, beta = _srun(_member("alpha", True, dbd_version="23.11.10"), "60001-63000"), _member("beta")
    with pytest.raises(PrerequisiteFailed) as refused:
        check_prerequisites(REQUEST, [alpha, beta], config)
    assert ("beta runs with SrunPortRange unset, the federation's SrunPortRange option is 60001-63000: set "
            "SrunPortRange=60001-63000 in its slurm.conf (ParallelCluster Scheduling/SlurmSettings/CustomSlurmSettings), "
            "then pcluster update-cluster") in str(refused.value)
    assert "alpha runs with" not in str(refused.value)  # alpha runs the option's range
    passed = check_prerequisites(REQUEST, [alpha, _srun(beta, "60001-63000")], config)
    assert "every member runs with SrunPortRange 60001-63000 (interactive srun/salloc -M)" in passed
