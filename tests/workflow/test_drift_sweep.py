"""The drift sweep state machine in moto (real ASL, real handlers; SSM reaches no node, as without the SSM policy)."""

from __future__ import annotations

import json

import pytest

from lab import cloud
from workflow.conftest import FEDERATION_TAGS, REGION

ACCOUNTING_TAGS = {**FEDERATION_TAGS, "slurm-multicluster:role": "accounting"}


def run_sweep(moto_aws, request: dict) -> dict:
    arn = cloud.start_execution(moto_aws.deployment, request, cloud.SWEEP_STATE_MACHINE)
    return cloud.wait_for_execution(arn, REGION, timeout=120)


def report_events() -> tuple[str, callable]:
    """Route every event the product publishes to an SQS queue; returns a reader of what arrived."""
    queue = cloud.events_queue(REGION, "sweep-events")
    return queue, lambda: cloud.published(queue, REGION)


@pytest.mark.parametrize("request_", [
    {"dryRun": "$(id)"},
    {"dryRun": "true"},
    {"dryRun": True, "federation": "hpc;reboot"},
    {"dryRun": True, "federation": "../../etc"},
    {"dryRun": True, "extra": "unexpected"},
    {"trigger": "cron; rm -rf /"},
    ["hpc"],
])
def test_hostile_sweep_requests_are_rejected_before_anything_runs(moto_aws, request_):
    result = run_sweep(moto_aws, request_)
    assert result["status"] == "FAILED"
    assert result["error"] == "InvalidInput"
    assert cloud.state_names(result["executionArn"], REGION) == ["NormalizeSweepRequest"]
    assert moto_aws.commands == []


def test_sweep_checks_every_tagged_cluster_and_reports_each_failure(moto_aws):
    moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    moto_aws.cluster("beta", "10.250.0.21", [], FEDERATION_TAGS)
    moto_aws.cluster("plain", "10.250.0.31", [])
    moto_aws.cluster("gamma", "10.250.0.41", [], {"slurm-multicluster:federation": "hpc;reboot"})
    _, received = report_events()

    result = run_sweep(moto_aws, {"dryRun": False})

    assert result["status"] == "SUCCEEDED", result.get("cause")
    report = json.loads(result["output"])
    assert report["dryRun"] is False
    assert report["checked"] == ["beta", "alpha"]  # members first, the accounting cluster last; "plain" untagged
    assert report["inSync"] == [] and report["drifted"] == [] and report["repaired"] == []
    failed = {line["cluster"]: line["error"] for line in report["failed"]}
    assert set(failed) == {"alpha", "beta", "gamma"}
    for cluster in ("alpha", "beta"):
        assert "ReadSlurmSettingsFailed" in failed[cluster] and "AmazonSSMManagedInstanceCore" in failed[cluster]
    assert "slurm-multicluster:federation" in failed["gamma"]  # the invalid tag is named, not dropped
    assert moto_aws.commands == []  # no node was reached

    events = [e for e in received() if e["detail-type"] == "Slurm Federation Drift Report"]
    assert len(events) == 1
    assert events[0]["source"] == "slurm-multicluster"
    assert events[0]["detail"]["failed"] == report["failed"]
    assert events[0]["detail"]["checked"] == ["beta", "alpha"]


def test_sweep_of_one_federation_leaves_the_others_alone(moto_aws):
    moto_aws.cluster("alpha", "10.250.0.11", [], ACCOUNTING_TAGS)
    moto_aws.cluster("other", "10.250.0.51", [], {"slurm-multicluster:federation": "lab",
                                                  "slurm-multicluster:role": "accounting"})  # lab's accounting

    result = run_sweep(moto_aws, {"dryRun": True, "federation": "lab"})

    assert result["status"] == "SUCCEEDED", result.get("cause")
    report = json.loads(result["output"])
    assert report["dryRun"] is True and report["federation"] == "lab"
    assert report["checked"] == ["other"]


def test_the_scheduled_sweep_runs_with_the_template_input(moto_aws):
    template = cloud.load_template()
    schedule = template["Resources"]["SweepStateMachine"]["Properties"]["Events"]["ScheduledSweep"]["Properties"]
    scheduled_input = json.loads(schedule["Input"]["Fn::Sub"].replace("${SweepDryRun}", "true"))

    result = run_sweep(moto_aws, scheduled_input)

    assert result["status"] == "SUCCEEDED", result.get("cause")
    assert json.loads(result["output"]) == {
        "dryRun": True, "federation": None, "checked": [], "inSync": [], "drifted": [], "repaired": [], "failed": [],
        "notAdmitted": [], "departed": [], "unpaired": [], "departedReaders": [], "members": {}}
