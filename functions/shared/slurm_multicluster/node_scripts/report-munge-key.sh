#!/usr/bin/env bash
# report-munge-key.sh: which munge key this node runs, as a fingerprint. Read-only: changes nothing.
#
# Usage: report-munge-key.sh [--help]
#
# For compute and login nodes, whose /etc/munge is their own: a cluster whose head node already runs the
# federation key can still have nodes on another one (the key copied to the head node only, by hand), and
# only the node itself can say which. Key bytes are never read into the output: sha256 only.
# Last stdout line, one JSON object: ok, changed (always false), mungeKeySha256 (null when there is no
# readable key file), mungeActive (bool).
# Exit status: 0 reported, 2 invalid input.
# Environment: MUNGE_KEY_FILE (/etc/munge/munge.key).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

parse_help_only "$@"
check_path_settings

munge_active=false
! unit_active munge || munge_active=true
result_str_or_null mungeKeySha256 "$(sha256_of "$MUNGE_KEY_FILE")"
result_bool mungeActive "$munge_active"
finish
