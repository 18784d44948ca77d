"""The leak scanner that guards every script run in these tests does see key material."""

from __future__ import annotations

import base64

from node_fixture import Opaque, key_leaks, new_key


def test_scanner_sees_raw_base64_and_hex_key_material():
    key = new_key(64)
    # wrapped in Opaque so that a failing assert cannot print the key either
    assert key_leaks(Opaque(b"x" + key + b"y")) == ["raw key bytes"]
    assert "base64 of the key" in key_leaks(Opaque(b"value: " + base64.b64encode(key)))
    assert "hex of the key" in key_leaks(Opaque(key.hex().encode()))
    assert key_leaks(b"sha256 only: " + bytes(64)) == []


def test_upload_puts_the_key_on_no_command_line(node, secret_name):
    # Node.run scans every recorded command line (the aws CLI's included) for the key
    result = node.run("upload-munge-key.sh", "--secret-id", secret_name, "--region", "us-east-1")
    assert result.returncode == 0, result.stderr
    puts = [c for c in node.calls() if c[:3] == ["aws", "secretsmanager", "put-secret-value"]]
    assert len(puts) == 1
    assert puts[0][puts[0].index("--secret-string") + 1].startswith("file://")
