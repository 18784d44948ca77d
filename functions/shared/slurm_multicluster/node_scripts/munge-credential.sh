#!/usr/bin/env bash
# munge-credential.sh: a cross-cluster munge round trip (do two nodes share one munge key?).
#
# Usage: munge-credential.sh encode
#        munge-credential.sh decode [--credential CREDENTIAL]   (else the credential is read from stdin)
#   encode   print a fresh credential from the local munged (`munge -n`): empty payload, encoded as
#            uid/gid 65534 (nobody) so a leaked credential authenticates no one who matters
#   decode   decode a credential made on another node with the local munged (`unmunge`)
#
# A credential is not key material: it is short-lived (munge's default TTL) and signed with the key.
# Read-only. Last stdout line, one JSON object:
#   encode: ok, changed (false), credential
#   decode: ok, changed (false), decoded (true when unmunge says Success), status (unmunge's STATUS,
#           e.g. "Success (0)", or its error such as "Invalid credential")
# A credential that does not decode is a result (ok true, decoded false); a munged that cannot be
# reached is a failure (ok false, exit 1). Exit status 2: invalid input.
# Environment: MUNGE_SOCKET (munge's default socket when empty).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

mode=""
credential=""
have_credential=false
while (($#)); do
    case $1 in
        encode | decode)
            [[ -z $mode ]] || die_usage "give one of encode or decode"
            mode=$1
            shift
            ;;
        --credential) require_value "$@"; credential=$2; have_credential=true; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $mode ]] || die_usage "give encode or decode"
check_path_settings
socket=()
[[ -z $MUNGE_SOCKET ]] || socket=(--socket "$MUNGE_SOCKET")

check_credential() {
    if ((${#1} > 8192)) || ! [[ $1 =~ $RE_MUNGE_CREDENTIAL ]]; then
        die_usage "invalid credential: must look like MUNGE:<base64>: (as printed by munge -n)"
    fi
}

if [[ $mode == encode ]]; then
    [[ $have_credential == false ]] || die_usage "--credential is only for decode"
    if ! credential=$(munge -n --uid 65534 --gid 65534 ${socket[@]+"${socket[@]}"} 2>/dev/null); then
        die "munge -n failed: is munged running?"
    fi
    [[ $credential =~ $RE_MUNGE_CREDENTIAL ]] || die "munge -n printed something that is not a credential"
    result_str credential "$credential"
    finish
fi

if [[ $have_credential == false ]]; then
    # one line from stdin, bounded so a stray stream cannot hang or flood the script
    IFS= read -r -t 10 -n 8193 credential || [[ -n $credential ]] || die_usage "no credential on stdin"
fi
check_credential "$credential"
make_private_tmpdir
rc=0
printf '%s\n' "$credential" | unmunge ${socket[@]+"${socket[@]}"} --output=/dev/null \
    --metadata="$PRIVATE_TMPDIR/metadata" 2>"$PRIVATE_TMPDIR/stderr" || rc=$?
status=$(sed -n 's/^STATUS:[[:space:]]*//p' "$PRIVATE_TMPDIR/metadata" 2>/dev/null | head -n1)
if [[ -z $status ]]; then
    status=$(sed -n 's/^unmunge: Error: //p' "$PRIVATE_TMPDIR/stderr" | head -n1)
fi
# munge exit codes: 8..18 are verdicts on the credential; anything else is a problem with munged itself
if ((rc != 0 && (rc < 8 || rc > 18))); then
    die "unmunge failed (exit $rc): ${status:-no message}"
fi
decoded=false
((rc != 0)) || decoded=true
result_bool decoded "$decoded"
result_str status "${status:-unknown}"
finish
