"""`make demo`: two real Slurm clusters on this machine, paired by the real workflow, then used together.

Steps (each printed with its elapsed time):
 1. bring up alpha (accounting: slurmdbd + MariaDB) and beta, each with a head node, a compute node and a login
    node, and its OWN munge key, on Slurm 24.11 (ParallelCluster 3.14's; --slurm for 22.05 or 26.05);
 2. show they are separate: beta's users cannot submit to alpha, alpha's munge credentials do not decode on beta;
 3. deploy template.yaml into moto, mirror both clusters as ParallelCluster stacks tagged into federation hpc
    (their request to join); beta's CREATE_COMPLETE then ends as "not admitted", changing nothing;
 4. as the administrator, declare the federation in the registry (alpha's StackId as its accounting cluster) and
    admit beta by its StackId: the registry's "Parameter Store Change" event starts the real pairing state
    machine through the template's EventBridge rule, whose real Lambdas run the product's SSM documents on the
    lab nodes; every state is printed;
 5. show `sacctmgr show clusters` listing both, a job submitted on alpha with `sbatch --clusters=beta` running
    and completing on beta's compute node, and beta still running its own jobs, all submitted from the clusters'
    login nodes, where users work.
Exits non-zero if any of that fails. The lab is taken down at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

from lab import cloud, roots
from lab.bridge import lab_cloud
from lab.core import ClusterSpec, Lab, LabError
from lab.parallelcluster import admit_cluster, declare_federation, parameter_change_event

FEDERATION = "demo"
START = time.monotonic()
CONSOLE = sys.stdout  # the Lambdas' JSON logs go to LOG_FILE instead, so the steps stay readable
LOG_FILE = Path("/var/tmp/slurm-multicluster-demo.log")


def say(step: str, detail: str = "") -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {step}{': ' + detail if detail else ''}", file=CONSOLE, flush=True)


def run(lab: Lab, node: str, command: str, timeout: float = 60) -> tuple[int, str]:
    done = lab.sh(node, command, timeout=timeout)
    return done.returncode, (done.stdout + done.stderr).strip()


def wait_for_job(lab: Lab, node: str, cluster: str, job_id: str, timeout: float = 90) -> dict[str, str]:
    """Poll `scontrol -M <cluster> show job` until the job completes (or fails); returns its fields."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        _, out = run(lab, node, f"scontrol -M {cluster} show job {job_id} --oneliner")
        fields = dict(re.findall(r"(\w+)=(\S+)", out))
        if fields.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            return fields
        time.sleep(0.5)
    raise LabError(f"job {job_id} on {cluster} did not finish within {timeout:.0f}s (last seen: {fields.get('JobState')})")


def submit(lab: Lab, node: str, cluster: str) -> str:
    code, out = run(lab, node, f"sbatch --clusters={cluster} --wrap 'hostname; sleep 1' --output=/tmp/demo-%j.out")
    match = re.search(r"Submitted batch job (\d+)", out)
    if code != 0 or not match:
        raise LabError(f"sbatch --clusters={cluster} on {node} failed: {out}")
    return match.group(1)


def print_state(event: dict) -> None:
    if "stateEnteredEventDetails" in event:
        say("  state", event["stateEnteredEventDetails"]["name"])
    elif event["type"] in ("ExecutionFailed",):
        details = event.get("executionFailedEventDetails", {})
        say("  execution failed", f"{details.get('error')}: {details.get('cause', '')[:500]}")


def demo(keep: bool, slurm: str) -> int:
    lab = Lab("demo", "10.251.0.0/24", [ClusterSpec("alpha", accounting=True, slurm=slurm, logins=1),
                                        ClusterSpec("beta", slurm=slurm, logins=1)])
    say("1. lab up", f"alpha (accounting) and beta on Slurm {slurm}, each a head, a compute and a login node, "
                     "different munge keys")
    lab.up(progress=lambda line: print(f"         {line}", flush=True))
    try:
        say("2. before pairing")
        _, version = run(lab, "beta-login-1", "sbatch --version")
        say("   beta-login-1$ sbatch --version", version)
        code, out = run(lab, "beta-login-1", "sbatch --clusters=alpha --wrap true")
        say("   beta-login-1$ sbatch --clusters=alpha", f"exit {code}: {out.splitlines()[-1] if out else ''}")
        credential = lab.exec("alpha-head", ["munge", "-n"]).stdout
        decoded = lab.exec("beta-head", ["unmunge"], input=credential)
        say("   alpha munge -n | beta unmunge", f"exit {decoded.returncode}: {decoded.stderr.strip() or decoded.stdout.splitlines()[0]}")

        tags = {  # each cluster's request to join (ParallelCluster `Tags:`); the registry decides
            "alpha": {"slurm-multicluster:federation": FEDERATION},
            "beta": {"slurm-multicluster:federation": FEDERATION},
        }
        say("3. deploy template.yaml into moto; mirror the clusters as ParallelCluster stacks (tagged, not admitted)")
        say("   Lambda logs", str(LOG_FILE))
        with LOG_FILE.open("w") as log, contextlib.redirect_stdout(log), \
                lab_cloud(lab, tags, admit={"alpha": None, "beta": None}) as aws:
            refused = aws.run(aws.event_for("beta"))
            say("   beta CREATE_COMPLETE before any admission", f"{refused['status']}: "
                f"{cloud.state_names(refused['executionArn'], aws.region)[-1]} (nothing changed)")
            say("4. administrator: declare federation hpc (accounting cluster alpha) and admit beta in the registry")
            declared = declare_federation(aws.region, FEDERATION, aws.clusters["alpha"].stack_id)
            say("   aws ssm put-parameter --name", declared)
            admitted = admit_cluster(aws.region, FEDERATION, aws.clusters["beta"].stack_id)
            say("   aws ssm put-parameter --name", admitted)
            say("   Parameter Store Change (beta admitted) -> EventBridge rule -> pairing state machine")
            result = aws.run(parameter_change_event(admitted, "Create", aws.region), on_event=print_state)
            say("   execution", result["status"])
            if result["status"] != "SUCCEEDED":
                say("   cause", result.get("cause", ""))
                return 1
            plan = json.loads(result["output"])
            say("   plan applied", f"{len(plan['ingressRules'])} ingress rules, restarts: {'; '.join(plan['restarts']) or 'none'}")
            say("   SSM commands sent", str(len(aws.commands)))

        say("5. after pairing")
        code, out = run(lab, "alpha-head", "sacctmgr -nP show clusters format=cluster,controlhost,controlport")
        say("   alpha$ sacctmgr show clusters", f"exit {code}")
        for line in out.splitlines():
            cluster, host, port = (line.split("|") + ["", "", ""])[:3]
            say(f"     {cluster:<10} ControlHost={host or '(none)'} ControlPort={port}")
        job = submit(lab, "alpha-login-1", "beta")
        say("   alpha-login-1$ sbatch --clusters=beta", f"job {job}")
        fields = wait_for_job(lab, "alpha-login-1", "beta", job)
        say("   job on beta", f"{fields.get('JobState')} on {fields.get('NodeList')}")
        own = submit(lab, "beta-login-1", "beta")
        own_fields = wait_for_job(lab, "beta-login-1", "beta", own)
        say("   beta's own job", f"{own_fields.get('JobState')} on {own_fields.get('NodeList')}")
        back = submit(lab, "beta-login-1", "alpha")
        back_fields = wait_for_job(lab, "beta-login-1", "alpha", back)
        say("   beta-login-1$ sbatch --clusters=alpha", f"{back_fields.get('JobState')} on {back_fields.get('NodeList')}")
        ok = all(f.get("JobState") == "COMPLETED" for f in (fields, own_fields, back_fields))
        say("result", "PAIRED: jobs run across clusters" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if keep:
            say("lab kept", "python -m lab status --name demo; python -m lab down --name demo")
        else:
            say("lab down")
            lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    parser.add_argument("--slurm", default=roots.DEFAULT_RELEASE, choices=list(roots.RELEASES),
                        help=f"Slurm release of both clusters (default {roots.DEFAULT_RELEASE}, ParallelCluster 3.14's)")
    args = parser.parse_args()
    try:
        code = demo(args.keep, args.slurm)
    except LabError as error:
        say("FAILED", str(error))
        code = 1
    say("done", f"exit {code}")
    sys.exit(code)


if __name__ == "__main__":
    main()
