#!/usr/bin/env bash
# upload-munge-key.sh: store this node's munge key as the federation secret's value.
#
# Usage: upload-munge-key.sh --secret-id ID --region REGION
#   --secret-id ID    the federation secret (name or ARN); it must already exist (it may have no value yet)
#   --region REGION   the secret's region
#
# Puts base64(MUNGE_KEY_FILE) as the secret's SecretString (the format ParallelCluster's MungeKeySecretArn
# takes), which becomes AWSCURRENT. When AWSCURRENT already decodes to this very key: "changed": false.
# When AWSCURRENT holds any other value: refuses (a federation has one key; rotating it is another step).
# The key never appears on a command line or in output: the value goes through a 0600 file in a 0700
# temp dir (`--secret-string file://...`), removed on exit.
# Last stdout line, one JSON object: ok, changed, sha256 (the key's fingerprint), versionId [, error].
# Exit status: 0 done, 1 failed or refused, 2 invalid input (nothing changed).
# Environment: MUNGE_KEY_FILE (/etc/munge/munge.key); the aws CLI's usual credentials and settings.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

secret_id=""
region=""
while (($#)); do
    case $1 in
        --secret-id) require_value "$@"; secret_id=$2; shift 2 ;;
        --region) require_value "$@"; region=$2; shift 2 ;;
        -h | --help) show_help ;;
        *) die_usage "unknown argument '$(sanitize "$1")'" ;;
    esac
done
[[ -n $secret_id ]] || die_usage "--secret-id is required"
[[ -n $region ]] || die_usage "--region is required"
check_secret_id "$secret_id"
check_region "$region"
check_path_settings

[[ -f $MUNGE_KEY_FILE && -r $MUNGE_KEY_FILE ]] || die "cannot read the munge key at $MUNGE_KEY_FILE"
key_size=$(wc -c <"$MUNGE_KEY_FILE")
((key_size >= 32 && key_size <= 1024)) || die "the local key is $key_size bytes: a munge key must be 32..1024 bytes"
key_sha=$(sha256_of "$MUNGE_KEY_FILE")
result_str sha256 "$key_sha"

make_private_tmpdir
current="$PRIVATE_TMPDIR/current"
aws_err="$PRIVATE_TMPDIR/aws.err"

# read_current: fetch AWSCURRENT as "VersionId<TAB>SecretString" into $current; fails when it has none.
read_current() {
    if aws secretsmanager get-secret-value --secret-id "$secret_id" --region "$region" \
        --query '[VersionId,SecretString]' --output text >"$current" 2>"$aws_err"; then
        return 0
    fi
    if grep -q "can't find the specified secret value" "$aws_err"; then
        : >"$current"
        return 0
    fi
    die "cannot read the secret: $(grep -v '^$' "$aws_err" | tail -n1)"
}

# current_sha: the fingerprint of the key AWSCURRENT decodes to; empty when there is no value.
# Refuses values that are not a base64 munge key.
current_sha() {
    local value="$PRIVATE_TMPDIR/current.b64" decoded="$PRIVATE_TMPDIR/current.key"
    [[ -s $current ]] || return 0
    cut -f2- <"$current" >"$value" || return 1
    if ! grep -q '[^[:space:]]' "$value"; then
        return 0
    fi
    if [[ $(cat "$value") == None ]]; then
        echo "error: AWSCURRENT has no SecretString (a binary secret?)" >&2
        return 1
    fi
    if [[ $(wc -l <"$value") -gt 1 ]] || ! grep -Eq '^[A-Za-z0-9+/]+={0,2}$' "$value" ||
        ! base64 -d <"$value" >"$decoded" 2>/dev/null; then
        echo "error: AWSCURRENT is not base64 text" >&2
        return 1
    fi
    sha256_of "$decoded"
}

read_current
if ! existing_sha=$(current_sha); then
    die "the secret's AWSCURRENT holds a value that is not a munge key: refusing to overwrite it"
fi
if [[ -n $existing_sha ]]; then
    [[ $existing_sha == "$key_sha" ]] ||
        die "the secret's AWSCURRENT holds a different munge key (sha256 $existing_sha): refusing to overwrite it"
    result_str versionId "$(cut -f1 <"$current")"
    finish
fi

upload="$PRIVATE_TMPDIR/upload.b64"
base64 -w0 <"$MUNGE_KEY_FILE" >"$upload"
chmod 0600 "$upload"
CHANGED=true
if ! version_id=$(aws secretsmanager put-secret-value --secret-id "$secret_id" --region "$region" \
    --secret-string "file://$upload" --query VersionId --output text 2>"$aws_err"); then
    CHANGED=false
    die "cannot store the key in the secret: $(grep -v '^$' "$aws_err" | tail -n1)"
fi
# read back: another writer racing us would show here
read_current
[[ $(current_sha || true) == "$key_sha" ]] ||
    die "after the upload the secret's AWSCURRENT does not hold this node's key (another writer?)"
result_str versionId "$version_id"
finish
