"""Shared test set-up: the domain package is importable as on Lambda (the layer is /opt/python there), and the
Powertools service name is the one template.yaml's Globals give every function, set before any test module
imports a handler (Powertools names its loggers at import: without it, which logger a handler logs to would
depend on the order tests run in)."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "functions" / "shared"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "slurm-multicluster")
