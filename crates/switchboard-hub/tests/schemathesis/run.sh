#!/usr/bin/env bash
# schemathesis against a live hub: starts target/debug/switchboard with the
# HTTP gateway on a free loopback port, fetches its /openapi.json and runs
# every operation with a bounded number of generated examples. Fails on a
# server error (5xx), a response that does not match its documented schema
# (status, content type, body), or a crash.
#
# Usage (from the workspace root, after `cargo build -p switchboard --bin
# switchboard`): crates/switchboard-hub/tests/schemathesis/run.sh
# Environment: ST_VENV (default target/st-venv), ST_MAX_EXAMPLES (default 20).
set -euo pipefail

venv="${ST_VENV:-$PWD/target/st-venv}"
examples="${ST_MAX_EXAMPLES:-20}"
bin="$PWD/target/debug/switchboard"
[ -x "$bin" ] || { echo "build target/debug/switchboard first" >&2; exit 1; }

if [ ! -x "$venv/bin/schemathesis" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5'
fi

work="$(mktemp -d)"
token="st-$RANDOM-$RANDOM-$RANDOM"
service="schemathesis-$$"
cleanup() {
  stop_hub
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh hub for each run: what one run leaves (service subscriptions of
# clients that never poll) would hold the next run's requests for their
# whole timeout.
start_hub() {
  stop_hub
  "$bin" --json --token "$token" --service "$service" hub \
    --listen 127.0.0.1:0 --http 127.0.0.1:0 >"$work/ready" 2>"$work/hub.log" &
  hub_pid=$!
  for _ in $(seq 100); do
    grep -q '"ready"' "$work/ready" 2>/dev/null && break
    sleep 0.1
  done
  http="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["http"])' "$work/ready")"
  echo "hub at http://$http (pid $hub_pid)"
}
stop_hub() {
  if [ -n "${hub_pid:-}" ]; then
    kill "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
    hub_pid=
  fi
}
bearer="$("$bin" --token "$token" token)"

# --checks all: not_a_server_error, status_code_conformance,
# content_type_conformance, response_schema_conformance,
# response_headers_conformance, negative_data_rejection,
# positive_data_acceptance, use_after_free, ensure_resource_availability,
# ignored_auth, missing_required_header, unsupported_method.
# Left out: /v1/ws and /v1/feed (WebSocket upgrades, not HTTP exchanges)
# and /v1/listen (a long poll: an example may hold it up to two minutes by
# design; gateway_http.rs tests it).
# The routes that carry application headers run without
# positive_data_acceptance: the header bounds (64 entries and 64 KiB over
# headers and headers_b64 together) span two fields, which JSON Schema
# cannot say; the schema gives each map's own bounds, so every body it
# refuses is refused (negative_data_rejection still runs there).
run_st() {
  start_hub
  # From the scratch directory, so nothing is left in the checkout.
  (cd "$work" && "$venv/bin/schemathesis" run "http://$http/openapi.json" \
    --url "http://$http" \
    --header "Authorization: Bearer $bearer" \
    --max-examples "$examples" \
    --request-timeout 15 \
    --workers 1 \
    --no-color \
    --seed 1 \
    --suppress-health-check all \
    --generation-database none \
    "$@")
  stop_hub
}
headers='^/v1/(send|request|reply|broadcast|publish)$'
run_st --checks all \
  --exclude-path /v1/ws --exclude-path /v1/feed --exclude-path /v1/listen \
  --exclude-path-regex "$headers"
run_st --checks all --exclude-checks positive_data_acceptance \
  --include-path-regex "$headers"
