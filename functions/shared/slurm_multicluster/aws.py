"""boto3 clients, one per (service, region), reused across invocations of a warm Lambda."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3


@cache
def client(service: str, region: str) -> Any:
    """A boto3 client for ``service`` in ``region``."""
    return boto3.client(service, region_name=region)
