"""Which ClusterName a departed cluster has in accounting (the one removed when removal is asked for)."""

from __future__ import annotations

from slurm_multicluster.unpairing import Departure, slurm_name_of


def _departure(name="Beta", ip="10.0.0.21"):
    return Departure(member=True, reason="", federation="hpc", cluster_name=name, region="us-east-1", head_node_ip=ip)


def test_the_name_registered_from_the_head_node_address_wins():
    assert slurm_name_of(_departure(), {"alpha": "10.0.0.11", "hpc-beta": "10.0.0.21"}) == "hpc-beta"


def test_without_a_live_registration_the_stack_name_is_matched_case_insensitively():
    assert slurm_name_of(_departure(), {"alpha": "10.0.0.11", "beta": ""}) == "beta"
    assert slurm_name_of(_departure(ip=None), {"beta": "10.0.0.99"}) == "beta"


def test_an_unregistered_cluster_has_no_name_to_remove():
    assert slurm_name_of(_departure(), {"alpha": "10.0.0.11"}) is None
