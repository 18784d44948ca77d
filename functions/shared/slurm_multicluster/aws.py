"""boto3 clients, one per (service, region), reused across invocations of a warm Lambda."""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import boto3

_creating = threading.Lock()  # boto3's default session is not safe to create clients from several threads


@cache
def client(service: str, region: str) -> Any:
    """A boto3 client for ``service`` in ``region``."""
    with _creating:
        return boto3.client(service, region_name=region)
