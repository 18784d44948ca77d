"""Exceptions whose class names become Step Functions error names (Retry/Catch match on them)."""

import json


class PairingError(Exception):
    """Base class: a pairing step could not do what it had to."""


class InvalidInput(PairingError):
    """A value from outside (event, tag, name, manual input) failed validation; nothing was changed."""


class PrerequisiteFailed(PairingError):
    """A cluster or the federation is not ready to be paired; the message says what the admin must do."""


class NodeUnreachable(PairingError):
    """SSM Run Command cannot reach a node (usually the AmazonSSMManagedInstanceCore policy is missing)."""


class NodeCommandFailed(PairingError):
    """A node script ran and reported failure (or timed out)."""


class VerificationFailed(PairingError):
    """The pairing was applied but the clusters do not work together."""


def concise(cause: str) -> str:
    """A Step Functions error cause without the Lambda error payload around its message (its JSON and stack trace):
    what reports and messages quote. Any other cause (a Task's States.Timeout, an SDK error) is returned as is."""
    start = cause.find("{")
    if start < 0:
        return cause
    try:
        payload = json.loads(cause[start:])
    except ValueError:
        return cause
    if isinstance(payload, dict) and "errorMessage" in payload:
        return cause[:start] + str(payload["errorMessage"])
    return cause
