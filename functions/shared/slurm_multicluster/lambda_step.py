"""How every step Lambda is wrapped: Powertools logging with the Lambda context, tracing, a typed event."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from slurm_multicluster import node_commands

logger = Logger()  # service name from POWERTOOLS_SERVICE_NAME; the package's modules log as its children
tracer = Tracer()

Model = TypeVar("Model", bound=BaseModel)


def pairing_step(model: type[Model]) -> Callable[[Callable[[Model, LambdaContext], Any]], Callable[[dict, LambdaContext], Any]]:
    """Turn ``step(event: model, context)`` into a Lambda handler that parses, logs and traces; node commands
    it sends give up before the Lambda's own timeout, and are cancelled when the step fails."""

    def decorate(step: Callable[[Model, LambdaContext], Any]) -> Callable[[dict, LambdaContext], Any]:
        @logger.inject_lambda_context
        @tracer.capture_lambda_handler
        @event_parser(model=model)
        @functools.wraps(step)
        def handler(event: Model, context: LambdaContext) -> Any:
            with node_commands.invocation(context):
                return step(event, context)

        return handler

    return decorate
