"""verify-member.sh polls until the member is usable; munge-credential.sh proves two nodes share a key."""

from __future__ import annotations

from node_fixture import new_key


def registered(node, **clusters):
    node.update_state(clusters=clusters, submit_ok=[n for n in clusters if n != "alpha"])


# ---------------------------------------------------------------- verify-member.sh


def test_verify_passes_when_accounting_lists_everyone_and_submission_works(node):
    registered(node, alpha={"host": "10.0.0.10", "port": 6820}, beta={"host": "10.0.1.20", "port": 6820})

    result = node.run("verify-member.sh", "--peers", "beta", "--deadline", "10")

    assert result.returncode == 0, result.stderr
    assert result.json["ok"] is True and result.json["changed"] is False
    assert result.json["cluster"] == "alpha"
    assert result.json["clusters"] == {
        "alpha": {"controlHost": "10.0.0.10", "controlPort": 6820},
        "beta": {"controlHost": "10.0.1.20", "controlPort": 6820},
    }
    assert result.json["submit"] == {"beta": True}
    assert result.json["badNodes"] == []
    assert isinstance(result.json["elapsedSeconds"], int)


def test_verify_waits_for_a_peer_that_registers_late(node):
    registered(
        node, alpha={"host": "10.0.0.10", "port": 6820}, beta={"host": "10.0.1.20", "port": 6820, "appear_after_calls": 2}
    )
    result = node.run("verify-member.sh", "--peers", "beta", "--deadline", "20")
    assert result.returncode == 0, result.stderr
    assert node.load_state()["sacctmgr_calls"] == 3


def test_verify_fails_at_the_deadline_saying_which_checks_failed(node):
    node.update_state(
        clusters={"alpha": {"host": "10.0.0.10", "port": 6820}, "beta": {"host": "", "port": 0}},
        submit_ok=[],
        nodes=[["alpha-st-c5-1", "down*"], ["alpha-st-c5-2", "idle"], ["alpha-dy-c5-1", "idle~"]],
    )

    result = node.run("verify-member.sh", "--peers", "beta,gamma", "--deadline", "2")

    assert result.returncode == 1
    error = result.json["error"]
    assert "beta has no ControlHost" in error
    assert "gamma is not registered" in error
    assert "sbatch --clusters=beta" in error
    assert result.json["badNodes"] == ["alpha-st-c5-1 down*"]
    assert result.json["submit"] == {"beta": False, "gamma": False}
    assert result.json["elapsedSeconds"] >= 2


def test_verify_treats_drained_and_not_responding_nodes_as_bad(node):
    registered(node, alpha={"host": "10.0.0.10", "port": 6820}, beta={"host": "10.0.1.20", "port": 6820})
    node.update_state(nodes=[["c1", "drained"], ["c2", "idle*"], ["c3", "mixed"], ["c4", "allocated"]])
    result = node.run("verify-member.sh", "--peers", "beta", "--deadline", "1")
    assert result.returncode == 1
    assert result.json["badNodes"] == ["c1 drained", "c2 idle*"]


def test_verify_does_not_count_nodes_in_power_saving_as_bad(node):
    """ParallelCluster's dynamic nodes without an instance are powered down (`idle~`); a node whose instance
    clustermgtd terminated is `down~` until reset; one booting is `#`, one being terminated `%`. None runs a
    slurmd (so no key): a rotation must not roll back for them."""
    registered(node, alpha={"host": "10.0.0.10", "port": 6820}, beta={"host": "10.0.1.20", "port": 6820})
    node.update_state(nodes=[["q-dy-c5-1", "idle~"], ["q-dy-c5-2", "down~"], ["q-dy-c5-3", "drained~"],
                             ["q-st-c5-1", "idle#"], ["q-dy-c5-4", "allocated%"], ["q-st-c5-2", "mixed"]])

    result = node.run("verify-member.sh", "--peers", "beta", "--deadline", "2")

    assert result.returncode == 0, result.stderr
    assert result.json["badNodes"] == []
    assert result.json["poweredDownNodes"] == ["q-dy-c5-1 idle~", "q-dy-c5-2 down~", "q-dy-c5-3 drained~",
                                               "q-st-c5-1 idle#", "q-dy-c5-4 allocated%"]


def test_verify_still_counts_a_running_node_that_stopped_responding(node):
    """A node with an instance that does not answer (`*`, e.g. a slurmd on another key) is bad, powered-down
    neighbours or not."""
    registered(node, alpha={"host": "10.0.0.10", "port": 6820}, beta={"host": "10.0.1.20", "port": 6820})
    node.update_state(nodes=[["q-dy-c5-1", "idle~"], ["q-st-c5-1", "mixed*"], ["q-st-c5-2", "down"]])

    result = node.run("verify-member.sh", "--peers", "beta", "--deadline", "1")

    assert result.returncode == 1
    assert result.json["badNodes"] == ["q-st-c5-1 mixed*", "q-st-c5-2 down"]
    assert result.json["poweredDownNodes"] == ["q-dy-c5-1 idle~"]


# ---------------------------------------------------------------- munge-credential.sh


def test_credential_from_this_node_decodes_here(node):
    encoded = node.run("munge-credential.sh", "encode")
    assert encoded.returncode == 0, encoded.stderr
    credential = encoded.json["credential"]
    assert credential.startswith("MUNGE:") and credential.endswith(":")

    decoded = node.run("munge-credential.sh", "decode", "--credential", credential)

    assert decoded.returncode == 0, decoded.stderr
    assert decoded.json == {"ok": True, "changed": False, "decoded": True, "status": "Success (0)"}


def test_credential_decodes_from_stdin(node):
    credential = node.run("munge-credential.sh", "encode").json["credential"]
    decoded = node.run("munge-credential.sh", "decode", stdin=credential + "\n")
    assert decoded.json["decoded"] is True


def test_credential_from_a_node_with_another_key_does_not_decode(make_node):
    alpha = make_node(key=new_key())
    beta = make_node(key=new_key())
    credential = alpha.run("munge-credential.sh", "encode").json["credential"]

    decoded = beta.run("munge-credential.sh", "decode", "--credential", credential)

    assert decoded.returncode == 0, decoded.stderr
    assert decoded.json["decoded"] is False
    assert decoded.json["status"] == "Invalid credential"


def test_credential_from_a_node_with_the_same_key_decodes(make_node):
    key = new_key()
    alpha = make_node(key=key)
    beta = make_node(key=key)
    credential = alpha.run("munge-credential.sh", "encode").json["credential"]
    assert beta.run("munge-credential.sh", "decode", "--credential", credential).json["decoded"] is True


def test_credential_fails_when_munged_is_down(node):
    node.standin("systemctl", "stop", "munge")
    result = node.run("munge-credential.sh", "encode")
    assert result.returncode == 1
    assert result.json["ok"] is False
