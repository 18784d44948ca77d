"""Time limits by design (issue 9): every workflow's worst case, compensation included, fits its execution
TimeoutSeconds; every step that waits on nodes has a TimeoutSeconds its Catch turns into the same compensation
as any other failure; the federation lease outlives every execution that holds it. Computed from the ASL files and
template.yaml themselves (docs/design.md, "Time budgets", shows the same arithmetic as a table)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab.cloud import load_template
from slurm_multicluster import limits, sweep

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
GLOBAL_TIMEOUT = int(TEMPLATE["Globals"]["Function"].get("Timeout", 3))
MACHINES = {logical: r for logical, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::StateMachine"}
LAMBDA_MAX_SECONDS = 900
INLINE_MAP_MAX_CONCURRENCY = 40  # an inline Map runs at most 40 iterations at once, whatever MaxConcurrency says
LEASE_MARGIN_SECONDS = 600  # the lease outlives the longest execution holding it by at least this
LEASE_HOLDERS = ["PairingStateMachine", "RotationStateMachine", "UnpairingStateMachine"]  # AcquireFederationLease

# How many items a Map iterates at most, by ItemsPath (limits.py; the discovery steps refuse more).
MAP_ITEMS = {
    "$.discovery.members": limits.MAX_FEDERATION_MEMBERS,
    "$.members": limits.MAX_FEDERATION_MEMBERS,
    "$.tagged.clusters": limits.MAX_SWEEP_CLUSTERS,
}
# The longest a Wait with a SecondsPath waits.
WAIT_SECONDS_PATHS = {"$.pollSeconds": sweep.LONGEST_POLL_SECONDS}


def _sweep_poll_loop_seconds() -> int:
    """The sweep polls a pairing run until it is no longer RUNNING, which its own execution TimeoutSeconds ends at
    the latest (TIMED_OUT): the loop's time is bounded by that, plus the one last poll the path counts."""
    return _definition("PairingStateMachine")["TimeoutSeconds"]


# Every cycle in a graph needs a bound: (state machine, the state a back edge returns to) -> seconds in the loop.
LOOP_SECONDS = {("SweepStateMachine", "WaitForPairingRun"): _sweep_poll_loop_seconds}


@functools.cache
def _definition(machine: str) -> dict[str, Any]:
    return json.loads((REPO / MACHINES[machine]["Properties"]["DefinitionUri"]).read_text())


def _function_of(machine: str, resource: str) -> str | None:
    """The logical id of the function a Task's ``${...FunctionArn}`` resource names, None for a service task."""
    if not resource.startswith("${"):
        return None
    attribute = MACHINES[machine]["Properties"]["DefinitionSubstitutions"][resource[2:-1]]["Fn::GetAtt"]
    return (attribute if isinstance(attribute, list) else attribute.split("."))[0]


def lambda_timeout(function: str) -> int:
    return int(RESOURCES[function]["Properties"].get("Timeout", GLOBAL_TIMEOUT))


def waits_on_nodes(function: str) -> bool:
    """It may send node commands (NodeCommandPolicy: ssm:SendCommand on the node documents)."""
    return {"Ref": "NodeCommandPolicy"} in RESOURCES[function]["Properties"].get("Policies", [])


def _tasks(states: dict[str, Any], enclosing_map: dict[str, Any] | None = None):
    """(name, Task state, the Map state around it or None) for every Task, Map items included."""
    for name, state in states.items():
        if state["Type"] == "Task":
            yield name, state, enclosing_map
        if state["Type"] == "Map":
            yield from _tasks(state["ItemProcessor"]["States"], state)


def retry_seconds(state: dict[str, Any]) -> tuple[int, float]:
    """(attempts after the first, seconds slept between attempts) over every retrier of a state."""
    retries, slept = 0, 0.0
    for retrier in state.get("Retry", []):
        attempts = retrier.get("MaxAttempts", 3)
        interval, backoff = retrier.get("IntervalSeconds", 1), retrier.get("BackoffRate", 2.0)
        cap = retrier.get("MaxDelaySeconds", math.inf)
        retries += attempts
        slept += sum(min(interval * backoff ** k, cap) for k in range(attempts))
    return retries, slept


@dataclass
class Step:
    """One state on a worst path and the seconds it costs there."""

    name: str
    seconds: float
    how: str


@dataclass
class Budget:
    steps: list[Step] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


def state_seconds(machine: str, name: str, state: dict[str, Any]) -> tuple[float, str]:
    """The longest one visit of a state can take (a Map: all its waves), and how that is counted."""
    kind = state["Type"]
    if kind == "Task":
        attempt = state["TimeoutSeconds"]
        retries, slept = retry_seconds(state)
        return attempt * (1 + retries) + slept, f"{attempt} s x {1 + retries} attempts + {slept:g} s between"
    if kind == "Wait":
        seconds = state["Seconds"] if "Seconds" in state else WAIT_SECONDS_PATHS[state["SecondsPath"]]
        return seconds, "wait"
    if kind == "Map":
        items = MAP_ITEMS[state["ItemsPath"]]
        concurrency = state.get("MaxConcurrency", 0) or INLINE_MAP_MAX_CONCURRENCY
        waves = math.ceil(items / min(concurrency, INLINE_MAP_MAX_CONCURRENCY))
        processor = state["ItemProcessor"]
        item = worst_path(machine, processor["States"], processor["StartAt"])
        return waves * item.seconds, f"{waves} waves ({items} items / {concurrency} at once) x {item.seconds:g} s"
    return 0, kind


def _next_states(state: dict[str, Any]) -> list[str]:
    nexts = [c["Next"] for c in state.get("Catch", [])]
    if state["Type"] == "Choice":
        nexts += [c["Next"] for c in state["Choices"]] + ([state["Default"]] if "Default" in state else [])
    elif "Next" in state:
        nexts.append(state["Next"])
    return list(dict.fromkeys(nexts))


def worst_path(machine: str, states: dict[str, Any], start: str) -> Budget:
    """The longest path from ``start`` to any end (Catch edges included); a loop counts the seconds its
    LOOP_SECONDS bound allows plus one pass; a loop without a bound fails the test."""
    back_edges: set[tuple[str, str]] = set()

    def find_loops(name: str, stack: list[str], seen: set[str]) -> None:
        seen.add(name)
        for following in _next_states(states[name]):
            if following in stack:
                back_edges.add((name, following))
            elif following not in seen:
                find_loops(following, [*stack, following], seen)

    find_loops(start, [start], set())
    for _, head in back_edges:
        assert (machine, head) in LOOP_SECONDS, f"{machine}: the loop back to {head} has no bound (LOOP_SECONDS)"

    @functools.cache
    def longest(name: str) -> tuple[Step, ...]:
        state = states[name]
        seconds, how = state_seconds(machine, name, state)
        here = [Step(name, seconds, how)]
        if any(head == name for _, head in back_edges):
            here.append(Step(f"{name} (loop)", LOOP_SECONDS[(machine, name)](), "until the loop's bound"))
        following = [longest(n) for n in _next_states(state) if (name, n) not in back_edges]
        return (*here, *max(following, key=lambda path: sum(s.seconds for s in path), default=()))

    return Budget(list(longest(start)))


def execution_budget(machine: str) -> Budget:
    definition = _definition(machine)
    return worst_path(machine, definition["States"], definition["StartAt"])


def table(machine: str) -> str:
    """The worst path as docs/design.md shows it (print it with `python -m tests.unit.test_time_budgets`)."""
    budget = execution_budget(machine)
    lines = [f"| {s.name} | {s.how} | {s.seconds:g} |" for s in budget.steps if s.seconds]
    timeout = _definition(machine).get("TimeoutSeconds")
    return "\n".join([f"{machine}: worst {budget.seconds:g} s of TimeoutSeconds {timeout}", *lines])


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_the_worst_path_including_compensation_fits_the_execution_timeout(machine):
    definition = _definition(machine)

    assert "TimeoutSeconds" in definition, f"{machine} has no execution TimeoutSeconds"
    budget = execution_budget(machine)
    assert budget.seconds < definition["TimeoutSeconds"], table(machine)


def test_the_pairing_worst_path_runs_through_its_compensation():
    names = [s.name for s in execution_budget("PairingStateMachine").steps]

    assert names.index("VerifyPairing") < names.index("RestoreNodeBackups") < names.index("RevokeAddedIngress")
    assert "ReleaseFederationLease" in names


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_every_task_has_a_timeout_and_a_lambda_task_waits_exactly_its_lambdas_timeout(machine):
    """One rule: a Lambda Task's TimeoutSeconds is its function's Timeout (longer would wait on a Lambda already
    dead; shorter would leave a Lambda running on after the workflow moved on to compensation)."""
    for name, state, _ in _tasks(_definition(machine)["States"]):
        assert isinstance(state.get("TimeoutSeconds"), int), f"{machine}.{name} has no TimeoutSeconds"
        function = _function_of(machine, state["Resource"])
        if function is not None:
            assert lambda_timeout(function) <= LAMBDA_MAX_SECONDS, function
            assert state["TimeoutSeconds"] == lambda_timeout(function), f"{machine}.{name} vs {function}"


def _catcher(state: dict[str, Any], error: str) -> dict[str, Any] | None:
    return next((c for c in state.get("Catch", []) if error in c["ErrorEquals"] or "States.ALL" in c["ErrorEquals"]),
                None)


def node_waiting_tasks() -> list[tuple[str, str, dict[str, Any], dict[str, Any] | None]]:
    return [(machine, name, state, around) for machine in sorted(MACHINES)
            for name, state, around in _tasks(_definition(machine)["States"])
            if (function := _function_of(machine, state["Resource"])) and waits_on_nodes(function)]


def test_the_node_waiting_tasks_are_the_ones_the_workflows_run_on_nodes():
    names = {name for _, name, _, _ in node_waiting_tasks()}

    assert {"ReadMemberSlurmSettings", "SyncMungeKey", "PointAccountingAtFederation", "VerifyPairing",
            "RestoreNodeBackups", "CreatePendingKey", "StageMemberKey", "SwitchMember", "TestFederation",
            "RollBackMember", "TestFederationOnPreviousKey", "DetachDepartingCluster",
            "RemoveFromAccounting"} <= names


@pytest.mark.parametrize("machine,name,state,around", node_waiting_tasks(),
                         ids=[f"{m}.{n}" for m, n, _, _ in node_waiting_tasks()])
def test_a_node_waiting_task_that_times_out_goes_where_any_other_failure_goes(machine, name, state, around):
    """States.Timeout is caught by the task (or, in a Map item, by the item or the Map) and leads to the same
    compensation as any other error."""
    catching = state if _catcher(state, "States.Timeout") else around
    assert catching is not None and _catcher(catching, "States.Timeout"), f"{machine}.{name}: States.Timeout uncaught"
    assert _catcher(catching, "States.Timeout") is _catcher(catching, "NodeCommandFailed")


def test_the_federation_lease_outlives_every_execution_that_holds_it():
    lease = TEMPLATE["Parameters"]["FederationLeaseSeconds"]
    longest = max(_definition(m)["TimeoutSeconds"] for m in LEASE_HOLDERS)

    assert lease["MinValue"] >= longest + LEASE_MARGIN_SECONDS
    assert lease["MinValue"] <= lease["Default"] <= lease["MaxValue"]


def test_the_lease_holders_are_the_workflows_that_acquire_it():
    holders = {m for m in MACHINES if "AcquireFederationLeaseFunctionArn" in MACHINES[m]["Properties"]["DefinitionSubstitutions"]}

    assert holders == set(LEASE_HOLDERS)


if __name__ == "__main__":
    for logical in sorted(MACHINES):
        print(table(logical), end="\n\n")
