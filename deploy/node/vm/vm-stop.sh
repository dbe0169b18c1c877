#!/bin/sh
# ExecStop of ccds-node-vm.service: presses the VM's ACPI power button through QEMU's QMP
# socket, then waits (up to TIMEOUT seconds) for QEMU to exit once the guest has powered off.
# Usage: vm-stop.sh QMP_SOCKET [TIMEOUT]
set -eu
socket=$1
timeout=${2:-120}

python3 - "$socket" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()  # the QMP greeting
for command in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": command}) + "\n")
    f.flush()
    f.readline()
PY

# MAINPID is QEMU's, set by systemd for ExecStop.
pid=${MAINPID:-}
[ -n "$pid" ] || exit 0
waited=0
while kill -0 "$pid" 2>/dev/null; do
  if [ "$waited" -ge $((timeout * 2)) ]; then
    echo "the VM did not power off within ${timeout}s" >&2
    exit 1
  fi
  sleep 0.5
  waited=$((waited + 1))
done
