"""A rotation while ParallelCluster scales the fleets: nodes launched and terminated during it, and a node that
claims the new key but runs the old one. The real rotation ASL in moto, nodes simulated (simulated_nodes.py)."""

from __future__ import annotations

from lab.parallelcluster import launch_compute_node, terminate_node
from workflow.simulated_nodes import SimulatedNode
from workflow.test_rotation_protocol import RotationAws, assert_rolled_back, rotation_aws, states  # noqa: F401


def _scale_during_the_switch(aws: RotationAws, old_sha: str) -> dict[str, str]:
    """As each of beta's and gamma's head nodes switches: beta gets a compute node launched just before (booted
    with the old key from the shared dir, unknown to the plan); gamma's planned compute node is terminated."""
    changed: dict[str, str] = {}

    def scale(cluster: str) -> None:
        if cluster == "beta" and "launched" not in changed:
            instance_id = launch_compute_node(aws.clusters["beta"], "10.252.0.23")
            aws.federation.add(SimulatedNode("beta-compute-2", "beta", "compute", instance_id, old_sha))
            changed["launched"] = instance_id
        if cluster == "gamma" and "terminated" not in changed:
            gone = aws.federation.node("gamma-compute-1")
            terminate_node(aws.clusters["gamma"], gone.instance_id)
            del aws.federation.nodes[gone.instance_id]  # SSM refuses a terminated instance (InvalidInstanceId)
            changed["terminated"] = gone.instance_id

    aws.federation.after_head_switch.append(scale)
    return changed


def test_nodes_launched_and_terminated_during_a_rotation_end_correct_and_every_running_node_is_checked(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    changed = _scale_during_the_switch(aws, old_sha)

    result = aws.rotate()

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert set(changed) == {"launched", "terminated"}
    new_sha = aws.current_key_sha()
    assert new_sha != old_sha
    # every running node of every member runs the new key, the one launched during the switch included
    assert aws.node_keys() == {name: new_sha for name in aws.node_keys()}
    assert "beta-compute-2" in aws.node_keys()
    launched = [c for c in aws.commands if c["InstanceId"] == changed["launched"]]
    assert [c["DocumentName"].rsplit("-", 1)[1] for c in launched] == ["InstallMungeKey", "ReportMungeKey"]
    assert launched[0]["Parameters"]["FromSharedDir"] == ["true"]
    # the terminated node was dropped, not failed on; the test fingerprinted every running compute node
    assert not any(c["InstanceId"] == changed["terminated"] and c["DocumentName"].endswith("InstallMungeKey")
                   for c in aws.commands)
    reported = {c["InstanceId"] for c in aws.commands if c["DocumentName"].endswith("ReportMungeKey")}
    assert reported == {n.instance_id for n in aws.federation.nodes.values() if n.role == "compute"}


def test_a_node_launched_during_a_rotation_that_rolls_back_ends_on_the_previous_key(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    changed = _scale_during_the_switch(aws, old_sha)
    aws.federation.slurmctld_dies_after_switch.add("gamma")  # the test fails: everyone switches back

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)  # every node, beta-compute-2 included, runs the old key
    assert result["error"] == "TestFederationFailed"
    assert aws.federation.node("beta-compute-2").key_sha == old_sha
    assert changed["launched"] in {c["InstanceId"] for c in aws.commands if c["DocumentName"].endswith("RestoreBackup")}


def test_a_node_that_claims_the_new_key_but_runs_the_old_one_fails_the_test_and_rolls_back(rotation_aws):
    aws = rotation_aws
    old_sha = aws.current_key_sha()
    liar = aws.federation.node("beta-compute-1")
    aws.federation.keeps_old_key.add(liar.name)

    result = aws.rotate()

    assert_rolled_back(aws, result, old_sha)
    assert result["error"] == "TestFederationFailed"
    assert f"beta: nodes {liar.instance_id} do not run munge key" in result["cause"]
    assert "TestFederationOnPreviousKey" in states(result)
