"""Domain package for Slurm multi-cluster pairing of AWS ParallelCluster clusters.

Every Lambda function imports from here; the node scripts under ``node_scripts/`` are the only code that runs
on cluster nodes.
"""
