#!/usr/bin/env bash
# Checks a built node image end to end on this host. A coordinator and two nodes run here (from
# a build of the workspace) and the image runs a third node with host networking. Then:
#   * a file published over the three comes back byte for byte;
#   * `status` and the image's health command answer inside the container;
#   * `stop` is a graceful leave the coordinator sees;
#   * `start` rejoins with the same identity and fragments (the /data volume);
#   * `pause` and `resume` through `exec` are a leave and a join.
#
# Usage: deploy/node/container/smoke-test.sh [IMAGE]        (default: ccds-node)
#   ENGINE=docker|podman   the container engine [default: docker, else podman]
#   ENGINE_ARGS="..."      extra `run` arguments (e.g. a runtime or ulimits your host needs)
#   BIN=DIR                cm-coordinator, ccds-node and ccds-client [default: target/release]
set -euo pipefail

image=${1:-ccds-node}
engine=${ENGINE:-$(command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker || echo podman)}
bin=${BIN:-target/release}
for b in cm-coordinator ccds-node ccds-client; do
  [ -x "$bin/$b" ] || { echo "$bin/$b not found: cargo build --release, or set BIN" >&2; exit 2; }
done
work=$(mktemp -d)
name=ccds-node-smoke-$$
volume=$name
pids=()
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  "$engine" volume rm -f "$volume" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# online ID: prints true or false as the coordinator lists node ID.
online() {
  "$bin/cm-coordinator" nodes --data-dir "$work/cm" --json |
    python3 -c 'import json, sys; print(str(any(n["id"] == sys.argv[1] and n["online"] for n in json.load(sys.stdin))).lower())' "$1"
}
wait_online() { # ID true|false
  for _ in $(seq 60); do [ "$(online "$1")" = "$2" ] && return 0; sleep 0.5; done
  fail "node $1: online is not $2"
}

"$bin/cm-coordinator" init --data-dir "$work/cm" >/dev/null
"$bin/cm-coordinator" run --data-dir "$work/cm" --allow-shared-subnet >"$work/cm.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do [ -f "$work/cm/coordinator.addr" ] && break; sleep 0.5; done
cm=$(cat "$work/cm/coordinator.addr")
for i in 1 2; do
  "$bin/ccds-node" init --data-dir "$work/n$i" --coordinator "$cm" --quota 1GiB 2>/dev/null >/dev/null
  "$bin/ccds-node" run --data-dir "$work/n$i" >"$work/n$i.log" 2>&1 &
  pids+=($!)
done

# shellcheck disable=SC2086
"$engine" run -d --name "$name" --network host -v "$volume:/data" ${ENGINE_ARGS:-} \
  -e CCDS_NODE_COORDINATOR="$cm" -e CCDS_NODE_QUOTA=1GiB \
  -e CCDS_NODE_LISTEN=/ip4/127.0.0.1/udp/0/quic-v1 -e CCDS_NODE_STATUS_PAGE=127.0.0.1:0 \
  --stop-timeout 30 "$image" >/dev/null
for _ in $(seq 60); do
  id=$("$engine" exec "$name" ccds-node status --json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' 2>/dev/null) && break
  sleep 0.5
done
[ -n "${id:-}" ] || { "$engine" logs "$name" >&2; fail "the container's node did not start"; }
wait_online "$id" true
echo "ok: the container's node $id joined"

head -c 3000000 /dev/urandom >"$work/film.bin"
"$bin/cm-coordinator" partner add acme --data-dir "$work/cm" >/dev/null
content=$("$bin/cm-coordinator" publish --data-dir "$work/cm" --partner acme \
  --data-shards 2 --parity-shards 1 --spare-shards 0 --segment-size 256KiB "$work/film.bin")
client=$("$bin/ccds-client" keygen --out "$work/c.key")
"$bin/cm-coordinator" ticket --data-dir "$work/cm" --partner acme --content "$content" \
  --client "$client" --out "$work/c.ticket"
"$bin/ccds-client" get --no-progress --key "$work/c.key" --ticket "$work/c.ticket" \
  --out "$work/got.bin" 2>/dev/null
cmp -s "$work/film.bin" "$work/got.bin" || fail "the download differs"
fragments=$("$engine" exec "$name" ccds-node status --json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["live"]["fragments"])')
[ "$fragments" -gt 0 ] || fail "no fragment stored in the container"
echo "ok: download byte-identical; the container holds $fragments fragments"

"$engine" exec "$name" sh -c 'ccds-node status --json | grep -q "\"running\":true"' ||
  fail "the health command reports unhealthy"
echo "ok: health command healthy"

"$engine" stop "$name" >/dev/null
wait_online "$id" false
"$engine" logs "$name" 2>&1 | grep -q "left the collective" || fail "no graceful leave in the log"
echo "ok: stop is a graceful leave"

"$engine" start "$name" >/dev/null
wait_online "$id" true
again=$("$engine" exec "$name" ccds-node status --json |
  python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["id"], s["live"]["fragments"])')
[ "$again" = "$id $fragments" ] || fail "after a restart: $again, not $id $fragments"
echo "ok: start rejoins with the same identity and fragments"

"$engine" exec "$name" ccds-node pause >/dev/null
wait_online "$id" false
"$engine" exec "$name" ccds-node resume >/dev/null
wait_online "$id" true
echo "ok: pause and resume are a leave and a join"
echo "all checks passed ($engine, image $image)"
