#!/bin/sh
# Caps everything the node VM sends to VM_UPLOAD_RATE on the host's uplink VM_UPLINK:
# nftables marks packets from the VM unit's cgroup (QEMU's user-mode network sends them from
# host sockets), and an HTB class on the uplink limits the marked packets. Other traffic goes
# to an unlimited default class. Without VM_UPLOAD_RATE it does nothing.
# Usage: net-cap.sh up|down   (environment: /etc/ccds-node-vm/vm.env)
set -eu
action=$1
rate=${VM_UPLOAD_RATE:-}
uplink=${VM_UPLINK:-}
if [ -z "$rate" ] || [ -z "$uplink" ]; then
  exit 0
fi
cgroup=system.slice/ccds-node-vm.service
mark=0xcc0de

case "$action" in
up)
  nft -f - <<NFT
table inet ccds_node_vm {
  chain out {
    type route hook output priority mangle; policy accept;
    socket cgroupv2 level 2 "$cgroup" meta mark set $mark
  }
}
NFT
  # Replaces the uplink's root queueing discipline: do not use with another shaper on it.
  tc qdisc replace dev "$uplink" root handle 1: htb default 10
  tc class replace dev "$uplink" parent 1: classid 1:10 htb rate 100gbit
  tc class replace dev "$uplink" parent 1: classid 1:20 htb rate "$rate" ceil "$rate"
  tc filter replace dev "$uplink" parent 1: protocol all prio 1 handle "$mark" fw flowid 1:20
  ;;
down)
  tc qdisc del dev "$uplink" root 2>/dev/null || true
  nft delete table inet ccds_node_vm 2>/dev/null || true
  ;;
*)
  echo "usage: $0 up|down" >&2
  exit 2
  ;;
esac
