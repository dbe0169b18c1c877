#!/bin/sh
# The node container's entry point: initialises the data directory on the first start (or
# updates the coordinator's address), then runs the node in the foreground as PID 1's child
# replacement, so `docker stop` (SIGTERM) reaches it and it leaves gracefully.
# Arguments are passed to `ccds-node run`.
set -eu
if [ -n "${CCDS_NODE_COORDINATOR:-}" ]; then
  ccds-node init --coordinator "$CCDS_NODE_COORDINATOR" >/dev/null
elif [ ! -f "${CCDS_NODE_DATA_DIR:-/data}/node.json" ]; then
  echo "set CCDS_NODE_COORDINATOR to the coordinator's address (ending in /p2p/<CM peer ID>)" >&2
  exit 2
fi
exec ccds-node run "$@"
