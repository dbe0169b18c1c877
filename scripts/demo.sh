#!/usr/bin/env bash
# One-command demo of a local CCDS collective: a coordinator and N node processes on loopback
# QUIC, one published file, one ticket, one verified download.
#
#   scripts/demo.sh                 # 256 MiB of random data, 12 nodes, k=8 m=4
#   scripts/demo.sh --size 1GiB     # generate a file of this size
#   scripts/demo.sh --file PATH     # publish an existing file
#   scripts/demo.sh --nodes 16 --data-shards 10 --parity-shards 6 --keep
#   scripts/demo.sh --bin-dir DIR   # use programs already built in DIR instead of building
set -euo pipefail

SIZE=256MiB FILE= NODES=12 K=8 M=4 SEGMENT=8MiB KEEP=0 BIN=
while [ $# -gt 0 ]; do
  case "$1" in
    --size|--file|--nodes|--data-shards|--parity-shards|--segment-size|--bin-dir)
      if [ $# -lt 2 ]; then echo "demo: $1 needs a value (try --help)" >&2; exit 2; fi ;;
  esac
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --file) FILE=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --data-shards) K=$2; shift 2 ;;
    --parity-shards) M=$2; shift 2 ;;
    --segment-size) SEGMENT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --bin-dir) BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$FILE" ] && [ ! -r "$FILE" ]; then
  echo "demo: cannot read $FILE" >&2
  exit 2
fi
if [ $((K + M)) -gt "$NODES" ]; then
  echo "demo: k+m=$((K + M)) fragments per segment need at least that many nodes (have $NODES)" >&2
  exit 2
fi

if [ -z "$BIN" ]; then
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  echo "== building (release)"
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --workspace --bins
  BIN=$CARGO_TARGET_DIR/release
fi
for program in cm-coordinator ccds-node ccds-client; do
  if [ ! -x "$BIN/$program" ]; then
    echo "demo: $BIN/$program is not an executable program" >&2
    exit 2
  fi
done
for tool in python3 cmp; do
  if ! command -v "$tool" >/dev/null; then
    echo "demo: $tool is required" >&2
    exit 2
  fi
done

WORK=$(mktemp -d -t ccds-demo.XXXXXX)
# The demo's collective is its own: settings meant for the user's real coordinator, nodes or
# client (CCDS_* variables, ~/.config/ccds/client.toml) stay out of it.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^CCDS_' || true)
export XDG_CONFIG_HOME=$WORK/config
PIDS=()
NODE_PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_file() { # path, what
  for _ in $(seq 1 600); do [ -s "$1" ] && return 0; sleep 0.05; done
  echo "demo: timed out waiting for $2 (logs in $WORK)" >&2; KEEP=1; exit 1
}

to_bytes() { # 256MiB → bytes
  python3 -c "import re,sys; m=re.fullmatch(r'(\d+)\s*([KMGT]?)(i?)B?', sys.argv[1].strip(), re.I); u=m.group(2).upper(); print(int(m.group(1))*((1024 if m.group(3) else 1000)**' KMGT'.index(u or ' ')))" "$1"
}

echo "== starting a coordinator and $NODES nodes in $WORK"
"$BIN/cm-coordinator" init --data-dir "$WORK/cm" >/dev/null
"$BIN/cm-coordinator" partner add demo-partner --data-dir "$WORK/cm" >/dev/null
"$BIN/cm-coordinator" run --data-dir "$WORK/cm" 2>"$WORK/cm.log" & PIDS+=($!)
wait_file "$WORK/cm/coordinator.addr" "the coordinator"
CM=$(cat "$WORK/cm/coordinator.addr")
for i in $(seq 1 "$NODES"); do
  # Each node on its own loopback address, as if on its own home network.
  if ! "$BIN/ccds-node" init --data-dir "$WORK/node$i" --coordinator "$CM" --quota 20GiB \
    >/dev/null 2>"$WORK/node$i.init.log"; then
    cat "$WORK/node$i.init.log" >&2; KEEP=1; exit 1
  fi
  "$BIN/ccds-node" run --data-dir "$WORK/node$i" --listen "/ip4/127.0.$i.1/udp/0/quic-v1" 2>"$WORK/node$i.log" & PIDS+=($!) NODE_PIDS+=($!)
done
for i in $(seq 1 "$NODES"); do wait_file "$WORK/node$i/node.addr" "node $i"; done

if [ -z "$FILE" ]; then
  FILE=$WORK/content.bin
  echo "== generating $SIZE of random data"
  head -c "$(to_bytes "$SIZE")" /dev/urandom >"$FILE"
fi
echo "== publishing $(basename "$FILE") (k=$K, m=$M, segments of $SEGMENT)"
T0=$(date +%s.%N)
CONTENT=$("$BIN/cm-coordinator" publish --data-dir "$WORK/cm" --partner demo-partner \
  --data-shards "$K" --parity-shards "$M" --segment-size "$SEGMENT" "$FILE")
T1=$(date +%s.%N)
echo "   content $CONTENT ($(python3 -c "print(f'{$T1-$T0:.2f}')") s)"

CLIENT=$("$BIN/ccds-client" keygen --out "$WORK/client.key")
"$BIN/cm-coordinator" ticket --data-dir "$WORK/cm" --partner demo-partner \
  --content "$CONTENT" --client "$CLIENT" --expires 1h --out "$WORK/client.ticket"
echo "== downloading with a ticket for client $CLIENT"
TIME=()
if [ -x /usr/bin/time ]; then TIME=(/usr/bin/time -f "%M" -o "$WORK/client.rss"); else echo 0 >"$WORK/client.rss"; fi
"${TIME[@]}" "$BIN/ccds-client" get --key "$WORK/client.key" --ticket "$WORK/client.ticket" \
  --out "$WORK/download.bin" --json >"$WORK/summary.json"

if cmp -s "$FILE" "$WORK/download.bin"; then VERIFIED=yes; else VERIFIED=NO; fi
NODE_RSS=0 # the largest peak resident set of any node, in KiB (Linux)
for pid in "${NODE_PIDS[@]}"; do
  kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  [ "${kib:-0}" -gt "$NODE_RSS" ] && NODE_RSS=$kib
done
python3 - "$WORK/summary.json" "$WORK/client.rss" "$VERIFIED" "$NODE_RSS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
node_rss = int(sys.argv[4]) / 1024
rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
mb = s["bytes"] / 1e6
print(f"== summary")
print(f"   size        {s['bytes']:,} bytes")
print(f"   time        {s['seconds']:.2f} s")
print(f"   throughput  {mb / max(s['seconds'], 1e-9):.1f} MB/s")
if rss:
    print(f"   client RSS  {rss:.1f} MiB (peak)")
if node_rss:
    print(f"   node RSS    {node_rss:.1f} MiB (peak of the largest node)")
print(f"   verified    {sys.argv[3]} (byte-identical)")
print(f"   bytes per node:")
for node, b in sorted(s["per_node"].items(), key=lambda kv: -kv[1]):
    print(f"     {node}  {b:>14,}")
PY
[ "$VERIFIED" = yes ]
