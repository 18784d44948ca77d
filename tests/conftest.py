"""Shared test set-up: the domain package is importable as on Lambda (the layer is /opt/python there)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "functions" / "shared"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
