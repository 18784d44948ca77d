"""What starts a pairing: strict parsing of events and manual requests, membership from stack tags."""

from __future__ import annotations

import pytest

from slurm_multicluster.discovery import membership
from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.settings import Settings
from slurm_multicluster.triggers import normalize

STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/beta/5b7a1a10-0b7e-11ef-9a0b-0a1b2c3d4e5f"


def _event(stack_id=STACK_ID, status="CREATE_COMPLETE"):
    return {
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": "CloudFormation Stack Status Change",
        "source": "aws.cloudformation", "account": "123456789012", "time": "2026-11-25T12:00:00Z",
        "region": "eu-west-1", "resources": [stack_id],
        "detail": {"stack-id": stack_id, "status-details": {"status": status, "status-reason": ""}},
    }


def test_create_complete_event_becomes_a_pairing_request_for_the_stack():
    request = normalize(_event(), "exec-1")
    assert (request.action, request.stack_name, request.region, request.event_id) == (
        "pair", "beta", "eu-west-1", "6a7e8feb-b491-4cf7-a9f1-bf3703467718")


def test_update_complete_re_applies_the_pairing():
    request = normalize(_event(status="UPDATE_COMPLETE"), "exec-1")
    assert (request.action, request.trigger) == ("pair", "UPDATE_COMPLETE")


def test_other_statuses_are_ignored():
    assert normalize(_event(status="UPDATE_IN_PROGRESS"), "exec-1").action == "ignore"


@pytest.mark.parametrize("stack_id", [
    STACK_ID.replace("stack/beta/", "stack/beta;reboot/"),
    STACK_ID.replace("stack/beta/", "stack/$(id)/"),
    "arn:aws:s3:::bucket",
    "",
])
def test_hostile_stack_ids_are_refused(stack_id):
    with pytest.raises(InvalidInput):
        normalize(_event(stack_id=stack_id), "exec-1")


def test_manual_request_keeps_dry_run():
    request = normalize({"stackName": "beta", "region": "eu-west-1", "dryRun": True}, "exec-1")
    assert request.dry_run and request.trigger == "manual" and request.event_id is None


def _stack(tags, **extra):
    return {"StackName": "beta", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()], **extra}


PC_TAGS = {"parallelcluster:version": "3.11.1", "slurm-multicluster:federation": "hpc"}


def test_tagged_top_level_parallelcluster_stack_is_a_member():
    assert membership(_stack(PC_TAGS), Settings())[0] == "hpc"


def test_nested_stacks_are_never_members_even_with_inherited_tags():
    # Nested stacks (queues, login nodes) inherit the parent's tags; DescribeStacks shows their ParentId.
    nested = _stack(PC_TAGS, ParentId="arn:aws:cloudformation:eu-west-1:123456789012:stack/beta/1", RootId="x")
    federation, reason = membership(nested, Settings())
    assert federation is None and "nested" in reason


def test_untagged_and_non_parallelcluster_stacks_are_not_members():
    assert membership(_stack({"parallelcluster:version": "3.11.1"}), Settings())[0] is None
    assert membership(_stack({"slurm-multicluster:federation": "hpc"}), Settings())[0] is None


@pytest.mark.parametrize("value", ["hpc;reboot", "$(id)", "a b", "", "x" * 64])
def test_hostile_federation_tag_values_are_refused(value):
    with pytest.raises(InvalidInput):
        membership(_stack({**PC_TAGS, "slurm-multicluster:federation": value}), Settings())


def test_sample_events_in_events_dir_parse(tmp_path):
    import json
    from pathlib import Path

    events = Path(__file__).resolve().parents[2] / "events"
    pairing_samples = ["stack-create-complete.json", "manual-pair.json", "manual-pair-dry-run.json"]
    requests = {name: normalize(json.loads((events / name).read_text()), "exec-1") for name in pairing_samples}
    assert requests["stack-create-complete.json"].action == "pair"
    assert requests["manual-pair-dry-run.json"].dry_run is True
    assert requests["manual-pair.json"].dry_run is False


def test_delete_in_progress_unpairs():
    request = normalize(_event(status="DELETE_IN_PROGRESS"), "exec-1", "unpairing")
    assert (request.action, request.trigger, request.stack_name) == ("unpair", "DELETE_IN_PROGRESS", "beta")


def _tag_event(changed, tags, service="cloudformation", resource_type="stack", resource=STACK_ID):
    return {
        "version": "0", "id": "7b8e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": "Tag Change on Resource",
        "source": "aws.tag", "account": "123456789012", "time": "2026-11-25T12:00:00Z", "region": "eu-west-1",
        "resources": [resource],
        "detail": {"changed-tag-keys": changed, "service": service, "resource-type": resource_type, "version": 3,
                   "tags": tags},
    }


def test_federation_tag_added_pairs_and_removed_unpairs():
    key = "slurm-multicluster:federation"
    added = normalize(_tag_event([key], {key: "hpc"}), "exec-1", "pairing")
    removed = normalize(_tag_event([key], {"team": "cfd"}), "exec-2", "unpairing")
    assert (added.action, added.trigger, added.stack_name, added.region) == ("pair", "tag-added", "beta", "eu-west-1")
    assert (removed.action, removed.trigger, removed.event_id) == ("unpair", "tag-removed", "7b8e8feb-b491-4cf7-a9f1-bf3703467718")


@pytest.mark.parametrize("event", [
    _tag_event(["team"], {"team": "cfd"}),  # another key
    _tag_event(["slurm-multicluster:federation"], {}, service="ec2", resource_type="instance"),
])
def test_other_tag_changes_are_ignored(event):
    assert normalize(event, "exec-1", "unpairing").action == "ignore"


def test_the_tag_key_is_the_deployment_s():
    event = _tag_event(["org:federation"], {})
    assert normalize(event, "exec-1", "unpairing", tag_key="org:federation").action == "unpair"
    assert normalize(event, "exec-1", "unpairing").action == "ignore"


@pytest.mark.parametrize("resource", [STACK_ID.replace("stack/beta/", "stack/$(id)/"), "arn:aws:s3:::bucket"])
def test_hostile_tag_change_resources_are_refused(resource):
    with pytest.raises(InvalidInput):
        normalize(_tag_event(["slurm-multicluster:federation"], {}, resource=resource), "exec-1", "unpairing")


def test_manual_requests_take_the_workflow_s_action_and_only_its_options():
    request = normalize({"stackName": "beta", "region": "eu-west-1", "removeFromAccounting": True,
                         "federation": "hpc"}, "exec-1", "unpairing")
    assert (request.action, request.remove_from_accounting, request.federation) == ("unpair", True, "hpc")
    for bad, workflow in (({"removeFromAccounting": True}, "pairing"), ({"federation": "hpc"}, "pairing"),
                          ({"dryRun": True}, "unpairing"), ({"federation": "hpc;id"}, "unpairing")):
        with pytest.raises(InvalidInput):
            normalize({"stackName": "beta", "region": "eu-west-1", **bad}, "exec-1", workflow)
    with pytest.raises(InvalidInput):
        normalize({"stackName": "beta", "region": "eu-west-1"}, "exec-1", "sweep;id")


# Members in other regions (issue 9): a stack of a region the deployment does not list is refused, loudly.
MEMBER_REGIONS = Settings(deployment_region="us-east-1", federation_regions=["eu-west-1"]).member_regions


def test_a_stack_in_a_listed_region_is_accepted_from_its_own_regions_event():
    assert normalize(_event(), "exec-1", member_regions=MEMBER_REGIONS).region == "eu-west-1"


@pytest.mark.parametrize("workflow", ["pairing", "unpairing"])
def test_a_stack_in_a_region_not_listed_is_refused_with_what_to_do(workflow):
    with pytest.raises(InvalidInput, match=r"region eu-west-1 of stack beta is not one of this deployment's regions "
                                           r"\(us-east-1\): add it to FederationRegions"):
        normalize(_event(), "exec-1", workflow, member_regions=["us-east-1"])
    with pytest.raises(InvalidInput, match="add it to FederationRegions"):
        normalize({"stackName": "beta", "region": "ap-south-1"}, "exec-1", workflow, member_regions=MEMBER_REGIONS)


def test_an_event_that_starts_nothing_is_not_refused_for_its_region():
    assert normalize(_event(status="CREATE_IN_PROGRESS"), "x", member_regions=["us-east-1"]).action == "ignore"


def test_an_event_emitted_in_another_region_than_its_stacks_is_refused():
    event = {**_event(), "region": "us-east-1"}
    with pytest.raises(InvalidInput, match="emitted in 'us-east-1' about a stack in 'eu-west-1'"):
        normalize(event, "exec-1")
