"""Real Slurm clusters shaped like AWS ParallelCluster ones, in network namespaces on this machine.

    from lab import Lab, ClusterSpec
    with Lab("lab", "10.250.0.0/24", [ClusterSpec("alpha", accounting=True), ClusterSpec("beta")]) as lab:
        print(lab.sh("beta-head", "sinfo").stdout)

See lab/README.md. Never imported by functions/.
"""

from .core import ClusterSpec, Lab, Node
from .system import LabError

__all__ = ["ClusterSpec", "Lab", "LabError", "Node"]
