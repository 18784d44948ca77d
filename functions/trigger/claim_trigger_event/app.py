"""ClaimTriggerEvent: make a twice-delivered EventBridge event pair only once (Powertools Idempotency)."""

import os

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster.lambda_step import logger, pairing_step
from slurm_multicluster.state import PairingState

persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
# EventBridge redelivers within hours at most; a day covers it. One event may start both workflows (an update or
# a tag change: the pairing re-applies, the unpairing looks for an opt-out): each claims it for its own action.
config = IdempotencyConfig(event_key_jmespath="[eventId, action]", expires_after_seconds=24 * 3600)


@idempotent_function(data_keyword_argument="claim", persistence_store=persistence, config=config)
def claim_event(claim: dict) -> dict:
    """The first execution to claim an event id owns it; later claims get the first owner's name back."""
    return {"owner": claim["executionName"]}


@pairing_step(PairingState)
def lambda_handler(state: PairingState, context: LambdaContext) -> dict:
    request = state.request
    if not request.event_id:  # manual runs have no delivery to deduplicate
        return {"duplicate": False, "owner": request.execution_name}
    config.register_lambda_context(context)
    try:
        owner = claim_event(claim={"eventId": request.event_id, "action": request.action,
                                   "executionName": request.execution_name})["owner"]
    except IdempotencyAlreadyInProgressError:
        owner = "another execution (in progress)"
    duplicate = owner != request.execution_name
    if duplicate:
        logger.info("duplicate delivery: another execution owns this event", extra={"event_id": request.event_id, "owner": owner})
    return {"duplicate": duplicate, "owner": owner}
