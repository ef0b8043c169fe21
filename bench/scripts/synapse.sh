#!/usr/bin/env bash
# Starts Synapse from PyPI for a side-by-side benchmark: SQLite, open registration, rate limits
# raised so that the benchmark measures the server, not its limiter.
#
#   bench/scripts/synapse.sh DIR PORT     # installs into DIR/venv on first use, runs in the foreground
#
# Then, in another shell:
#   cargo run --release --bin myelin-load -- --compare http://127.0.0.1:PORT --target-pid "$(cat DIR/homeserver.pid)"
set -euo pipefail
dir=${1:?usage: synapse.sh DIR PORT}
port=${2:?usage: synapse.sh DIR PORT}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet matrix-synapse
fi
if [ ! -f "$dir/homeserver.yaml" ]; then
    cd "$dir"
    "$dir/venv/bin/python" -m synapse.app.homeserver --server-name "localhost:$port" \
        --config-path "$dir/homeserver.yaml" --data-directory "$dir" --generate-config --report-stats=no
    # The generated file may not end with a newline.
    printf '\n' >> "$dir/homeserver.yaml"
    cat >> "$dir/homeserver.yaml" <<YAML
enable_registration: true
enable_registration_without_verification: true
rc_message: {per_second: 100000, burst_count: 100000}
rc_registration: {per_second: 100000, burst_count: 100000}
rc_login:
  address: {per_second: 100000, burst_count: 100000}
  account: {per_second: 100000, burst_count: 100000}
  failed_attempts: {per_second: 100000, burst_count: 100000}
rc_joins:
  local: {per_second: 100000, burst_count: 100000}
  remote: {per_second: 100000, burst_count: 100000}
rc_joins_per_room: {per_second: 100000, burst_count: 100000}
rc_invites:
  per_room: {per_second: 100000, burst_count: 100000}
  per_user: {per_second: 100000, burst_count: 100000}
  per_issuer: {per_second: 100000, burst_count: 100000}
rc_room_creation: {per_second: 100000, burst_count: 100000}
rc_presence:
  per_user: {per_second: 100000, burst_count: 100000}
YAML
    # Listen on the requested port, plain HTTP on loopback.
    sed -i -E "s/^( +)port: [0-9]+/\1port: $port/" "$dir/homeserver.yaml"
    printf 'suppress_key_server_warning: true\n' >> "$dir/homeserver.yaml"
fi
# Synapse writes its log next to where it runs.
cd "$dir"
exec "$dir/venv/bin/python" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml"
