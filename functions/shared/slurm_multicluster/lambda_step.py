"""How every step Lambda is wrapped: Powertools logging with the Lambda context, tracing, a typed event; a step
that changes nodes or the cloud also proves first that its execution still holds the federation lease."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from slurm_multicluster import lease, node_commands
from slurm_multicluster.aws import client
from slurm_multicluster.errors import InvalidInput
from slurm_multicluster.settings import settings

logger = Logger()  # service name from POWERTOOLS_SERVICE_NAME; the package's modules log as its children
tracer = Tracer()

Model = TypeVar("Model", bound=BaseModel)
Step = Callable[[Model, LambdaContext], Any]
Handler = Callable[[dict, LambdaContext], Any]


def pairing_step(model: type[Model]) -> Callable[[Step], Handler]:
    """Turn ``step(event: model, context)`` into a Lambda handler that parses, logs and traces; node commands
    it sends give up before the Lambda's own timeout, and are cancelled when the step fails."""
    return _step_handler(model, check_event=None)


def leased_step(model: type[Model], runs_before_lease: bool = False) -> Callable[[Step], Handler]:
    """pairing_step for a step that changes nodes or the cloud: before anything else, the event's ``lease`` (as
    AcquireFederationLease returned it) must still be the federation's live lease, with the same fencing token,
    for at least the Lambda's remaining time; otherwise LeaseLost is raised and nothing is changed.

    ``runs_before_lease``: the step also accepts ``"lease": null``, which the ASL passes on purpose where it runs
    the step before acquiring the lease. A missing ``lease`` is always refused."""
    return _step_handler(model, check_event=functools.partial(_ensure_lease_held, runs_before_lease=runs_before_lease))


def _step_handler(model: type[Model], check_event: Callable[[dict, LambdaContext], None] | None) -> Callable[[Step], Handler]:
    def decorate(step: Step) -> Handler:
        @event_parser(model=model)
        @functools.wraps(step)
        def typed_step(event: Model, context: LambdaContext) -> Any:
            with node_commands.invocation(context):
                return step(event, context)

        @logger.inject_lambda_context
        @tracer.capture_lambda_handler
        @functools.wraps(step)
        def handler(event: dict, context: LambdaContext) -> Any:
            if check_event is not None:
                check_event(event, context)
            return typed_step(event, context)

        return handler

    return decorate


def _ensure_lease_held(event: dict, context: LambdaContext, runs_before_lease: bool) -> None:
    given = event.get("lease", "missing") if isinstance(event, dict) else "missing"
    if given is None and runs_before_lease:
        logger.info("running before the federation lease is acquired, as the workflow asks")
        return
    if not isinstance(given, dict):
        raise InvalidInput("this step changes the federation: its event must carry the execution's lease")
    held = lease.Lease.model_validate(given)
    config = settings()
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    lease.ensure_held(client("dynamodb", config.deployment_region), config.federation_lease_table, held,
                      for_seconds=remaining() / 1000 if callable(remaining) else 0)
