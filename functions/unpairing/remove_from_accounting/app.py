"""RemoveFromAccounting: keep the departed cluster's history in accounting (default) or delete it from slurmdbd."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from slurm_multicluster import pairing, unpairing
from slurm_multicluster.aws import client
from slurm_multicluster.lambda_step import leased_step
from slurm_multicluster.settings import settings
from slurm_multicluster.state import UnpairingState


@leased_step(UnpairingState)
def lambda_handler(state: UnpairingState, context: LambdaContext) -> dict:
    departure = state.departing()
    assert departure.federation
    config = pairing.federation_settings(client, departure.federation, settings())  # the registry's overrides
    return unpairing.remove_from_accounting(client, state.request, departure, state.remaining, config)
