#!/usr/bin/env bash
# Runs schemathesis against a running hooksign's /api/v1/openapi.json: no 5xx, and every response
# conforms to the document. Bounded in examples and time; stops the hooksign it started by PID.
# Usage: .ci/schemathesis.sh PATH/TO/schemathesis-bin PATH/TO/hooksign
set -euo pipefail
st="$1"
hooksign="$2"
work="$(mktemp -d)"
token="hks_schemathesis_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
digest="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
company="550e8400-e29b-41d4-a716-446655440000"
cat > "$work/config.toml" <<CONFIG
[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
rate_limit_per_minute = 100000
[[admin.tokens]]
name = "schemathesis"
sha256 = "$digest"
permissions = ["webhook.view", "webhook.manage"]
companies = ["$company"]
CONFIG

"$hooksign" serve --config "$work/config.toml" > "$work/ready" 2> "$work/log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  grep -q '^ready ' "$work/ready" 2>/dev/null && break
  sleep 0.1
done
admin="$(sed -n 's/^ready .*admin=\([^ ]*\).*/\1/p' "$work/ready")"
[ -n "$admin" ] || { echo "hooksign did not start"; cat "$work/log"; exit 1; }

# schemathesis keeps a cache in the working directory: keep it out of the checkout.
cd "$work"
timeout 600 "$st" run "http://$admin/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --header "X-Company: $company" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples 25 \
  --request-timeout 10 \
  --no-color
