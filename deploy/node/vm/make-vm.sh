#!/usr/bin/env bash
# Builds the CCDS node VM on a Linux host: a disk of fixed size on top of a Debian 12 cloud
# image, a cloud-init seed disk that installs and starts ccds-node inside, and the host unit
# (ccds-node-vm.service) that runs the VM with capped CPUs, memory, disk I/O and upload.
#
# Usage (as root):
#   ./make-vm.sh --coordinator /ip4/.../udp/.../quic-v1/p2p/12D3... --binary ./ccds-node \
#       --image debian-12-genericcloud-amd64.qcow2 --ssh-key ~/.ssh/id_ed25519.pub \
#       [--disk 60G] [--quota 50GiB] [--upload-limit 5MiB] [--cpus 2] [--memory 2048] \
#       [--upload-cap 20mbit --uplink eth0] [--node-port 4001] [--announce MULTIADDR]
#   systemctl enable --now ccds-node-vm
#
# Repeat --coordinator for each coordinator of a collective that runs several (one peer ID).
#
# --announce is where clients reach the node: the host's public address and --node-port (the UDP
# port forwarded to the VM; forward it on your router too). Default: the address of the host's
# default route, which is right when the host itself is reachable (not behind NAT).
# The binary must run on Debian 12 (build it there, or for x86_64-unknown-linux-musl).
# Needs: qemu-system-x86_64, qemu-img, genisoimage (or xorriso), nft and tc for the upload cap.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
coordinator="" binary="" image="" ssh_key="" disk=60G quota=50GiB upload_limit=5MiB
cpus=2 memory=2048 upload_cap="" uplink="" dir=/var/lib/ccds-node-vm node_port=4001 announce=""

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator)
      case "$2" in */p2p/*) ;; *) echo "--coordinator must end in /p2p/<CM peer ID>" >&2; exit 2 ;; esac
      coordinator=${coordinator:+$coordinator,}$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --ssh-key) ssh_key=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --quota) quota=$2; shift 2 ;;
    --upload-limit) upload_limit=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --upload-cap) upload_cap=$2; shift 2 ;;
    --uplink) uplink=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --node-port) node_port=$2; shift 2 ;;
    --announce) announce=$2; shift 2 ;;
    *) usage ;;
  esac
done
if [ -z "$coordinator" ] || [ -z "$binary" ] || [ -z "$image" ] || [ -z "$ssh_key" ]; then
  usage
fi
[ -x "$binary" ] || { echo "$binary is not an executable" >&2; exit 2; }
[ -f "$image" ] || { echo "$image: no such image (download debian-12-genericcloud-amd64.qcow2)" >&2; exit 2; }
if [ -z "$announce" ]; then
  host_ip=$(ip -4 route get 192.0.2.1 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1); exit }')
  [ -n "$host_ip" ] || { echo "cannot tell this host's address: give --announce" >&2; exit 2; }
  announce=/ip4/$host_ip/udp/$node_port/quic-v1
fi
case "$announce" in /ip4/*/udp/*/quic-v1 | /ip6/*/udp/*/quic-v1 | /dns*/udp/*/quic-v1) ;;
  *) echo "--announce must look like /ip4/203.0.113.7/udp/4001/quic-v1" >&2; exit 2 ;;
esac
if [ -n "$upload_cap" ] && [ -z "$uplink" ]; then
  uplink=$(ip route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1); exit }')
fi

install -d -m 0700 "$dir"
# The guest's disk: a copy-on-write layer of fixed virtual size over the base image, so the VM
# can never use more host disk than --disk (plus the base image).
install -m 0644 "$image" "$dir/base.qcow2"
rm -f "$dir/disk.qcow2"
qemu-img create -q -f qcow2 -F qcow2 -b "$dir/base.qcow2" "$dir/disk.qcow2" "$disk"

seed=$(mktemp -d)
trap 'rm -rf "$seed"' EXIT
key=$(cat "$ssh_key")
tz=$(timedatectl show -p Timezone --value 2>/dev/null || echo UTC)
sed -e "s|@COORDINATOR@|$coordinator|" -e "s|@QUOTA@|$quota|" \
    -e "s|@UPLOAD_LIMIT@|$upload_limit|" -e "s|@SSH_KEY@|$key|" -e "s|@TIMEZONE@|$tz|" \
    -e "s|@ANNOUNCE@|$announce|" \
    "$here/user-data.yaml" > "$seed/user-data"
printf 'instance-id: ccds-node-%s\nlocal-hostname: ccds-node\n' "$(date +%s)" > "$seed/meta-data"
install -m 0755 "$binary" "$seed/ccds-node"
install -m 0644 "$here/../ccds-node.service" "$seed/ccds-node.service"
if command -v genisoimage >/dev/null; then
  genisoimage -quiet -output "$dir/seed.iso" -volid cidata -joliet -rock "$seed"
else
  xorriso -as mkisofs -quiet -output "$dir/seed.iso" -volid cidata -joliet -rock "$seed"
fi

install -d /etc/ccds-node-vm /usr/local/lib/ccds-node-vm
sed -e "s|^VM_CPUS=.*|VM_CPUS=$cpus|" -e "s|^VM_MEMORY=.*|VM_MEMORY=$memory|" \
    -e "s|^VM_DIR=.*|VM_DIR=$dir|" -e "s|^VM_UPLINK=.*|VM_UPLINK=$uplink|" \
    -e "s|^VM_UPLOAD_RATE=.*|VM_UPLOAD_RATE=$upload_cap|" \
    -e "s|^NODE_PORT=.*|NODE_PORT=$node_port|" \
    "$here/vm.env.example" > /etc/ccds-node-vm/vm.env
install -m 0755 "$here/vm-stop.sh" "$here/net-cap.sh" /usr/local/lib/ccds-node-vm/
install -m 0644 "$here/ccds-node-vm.service" /etc/systemd/system/ccds-node-vm.service
systemctl daemon-reload
echo "VM ready in $dir: systemctl enable --now ccds-node-vm"
echo "then: ssh -p 2222 owner@127.0.0.1 sudo ccds-node status --data-dir /var/lib/ccds-node"
