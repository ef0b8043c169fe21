#!/usr/bin/env bash
# Measures the server's memory while a large file goes up and comes back down: uploads and
# downloads stream, so the resident set should not grow with the file.
#
#   bench/scripts/media-rss.sh [SIZE_MIB]     # default 1024 (1 GiB); needs a release build:
#   cargo build --release --bin myelin-server
#
# Prints the server's resident set (VmRSS) at rest and its peak (VmHWM) after each transfer.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
bin=${MYELIN_SERVER_BIN:-./target/release/myelin-server}
data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
MYELIN_DATA_DIR="$data" MYELIN_SERVER_NAME="localhost:$port" MYELIN_LISTEN__CLIENT="127.0.0.1:$port" \
    MYELIN_RATE_LIMITS__ENABLED=false MYELIN_MEDIA__MAX_UPLOAD_SIZE=$(((size_mib + 1) * 1024 * 1024)) \
    MYELIN_LOG=warn "$bin" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -sf "$url/_matrix/client/versions" >/dev/null && break; sleep 0.1; done

json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
session=$(curl -s -X POST "$url/_matrix/client/v3/register" -d '{"username": "big", "password": "pw"}' | json '["session"]')
token=$(curl -s -X POST "$url/_matrix/client/v3/register" \
    -d "{\"username\": \"big\", \"password\": \"pw\", \"auth\": {\"type\": \"m.login.dummy\", \"session\": \"$session\"}}" |
    json '["access_token"]')
mem() { awk -v k="$1:" '$1 == k { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status"; }

echo "file: $size_mib MiB"
echo "at rest:        RSS $(mem VmRSS), peak $(mem VmHWM)"
start=$(date +%s.%N)
# -T - streams stdin in chunks: nothing is held whole on the client side either.
uri=$(head -c "${size_mib}M" /dev/zero | curl -s -T - -X POST -H "Authorization: Bearer $token" \
    -H "Content-Type: application/octet-stream" "$url/_matrix/media/v3/upload" | json '["content_uri"]')
end=$(date +%s.%N)
echo "after upload:   RSS $(mem VmRSS), peak $(mem VmHWM)   ($(python3 -c "print(f'{$size_mib / ($end - $start):.0f}')") MiB/s)"
start=$(date +%s.%N)
got=$(curl -s -H "Authorization: Bearer $token" "$url/_matrix/client/v1/media/download/${uri#mxc://}" | wc -c)
end=$(date +%s.%N)
echo "after download: RSS $(mem VmRSS), peak $(mem VmHWM)   ($(python3 -c "print(f'{$size_mib / ($end - $start):.0f}')") MiB/s, $got bytes)"
test "$got" -eq $((size_mib * 1024 * 1024))
