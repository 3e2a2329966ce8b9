#!/usr/bin/env bash
# Starts a local libvirtd with the QEMU driver so that qemu:///system works, for the optional
# end-to-end test tests/adapters/libvirt_qemu_e2e_test.cpp (and CI).
#
# Idempotent: installs only missing packages, creates the qemu user and groups only if
# missing, and starts virtlogd/libvirtd only if they are not already running.
# Needs root. Exits 0 when `virsh -c qemu:///system version` answers, non-zero otherwise
# (the e2e test then skips itself with a message; nothing else depends on this script).
set -euo pipefail

log() { echo "start_libvirtd: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

# qemu-utils: qemu-img, which libvirt's dir storage pools need to create qcow2 volumes (the pool
# overlays) and the e2e tests use to inspect them; only recommended by qemu-system-x86.
packages=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-clients)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} > 0)); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian QEMU driver runs guests as libvirt-qemu; the packages that normally create the
# account (libvirt-daemon-system) are not installed here.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
if ! id libvirt-qemu >/dev/null 2>&1; then
  useradd --system --gid kvm --groups libvirt-qemu --home-dir /var/lib/libvirt \
    --no-create-home --shell /usr/sbin/nologin libvirt-qemu
fi
if [[ -e /dev/kvm ]]; then
  chgrp kvm /dev/kvm 2>/dev/null || true
  chmod 0660 /dev/kvm 2>/dev/null || true
fi

mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu /var/log/libvirt/qemu

# SPICE over TLS for the end-to-end tests: a test CA and a server certificate for 127.0.0.1 in
# libvirt's default SPICE certificate directory, and spice_tls = 1 in qemu.conf. Made once; the
# tests read the CA from there. (Plain SPICE ports keep working: TLS is only offered.)
spice_dir=/etc/pki/libvirt-spice
if [[ ! -s $spice_dir/server-cert.pem ]] && command -v openssl >/dev/null 2>&1; then
  log "making a test CA for SPICE TLS in $spice_dir"
  mkdir -p "$spice_dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/O=Atrium test CA/CN=Atrium SPICE test CA" \
    -keyout "$spice_dir/ca-key.pem" -out "$spice_dir/ca-cert.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/C=XX/O=Atrium test/CN=127.0.0.1" \
    -keyout "$spice_dir/server-key.pem" -out "$spice_dir/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1\n' > "$spice_dir/san.ext"
  openssl x509 -req -in "$spice_dir/server.csr" -CA "$spice_dir/ca-cert.pem" -CAkey "$spice_dir/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$spice_dir/san.ext" -out "$spice_dir/server-cert.pem" >/dev/null 2>&1
  rm -f "$spice_dir/server.csr" "$spice_dir/san.ext"
  chmod 0755 "$spice_dir"
  chmod 0644 "$spice_dir/ca-cert.pem" "$spice_dir/server-cert.pem"
  chmod 0640 "$spice_dir/server-key.pem"
  chgrp kvm "$spice_dir/server-key.pem" 2>/dev/null || true
fi
restart=0
if [[ -s $spice_dir/server-cert.pem ]] && ! grep -q '^spice_tls = 1' /etc/libvirt/qemu.conf 2>/dev/null; then
  mkdir -p /etc/libvirt
  printf '\n# Added by atrium tools/start_libvirtd.sh: SPICE over TLS for the end-to-end tests.\nspice_tls = 1\n' \
    >> /etc/libvirt/qemu.conf
  restart=1
fi

is_running() { pgrep -x "$1" >/dev/null 2>&1; }

if ! is_running virtlogd; then
  log "starting virtlogd"
  virtlogd -d
fi
if is_running libvirtd && [[ $restart == 1 ]]; then
  log "restarting libvirtd for spice_tls (running domains stay)"
  pkill -x libvirtd || true
  for _ in $(seq 1 50); do is_running libvirtd || break; sleep 0.1; done
fi
if ! is_running libvirtd; then
  log "starting libvirtd"
  libvirtd -d
fi

# Wait (bounded) for the daemon to answer.
for _ in $(seq 1 60); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    log "qemu:///system is up"
    exit 0
  fi
  sleep 0.5
done
log "libvirtd did not answer on qemu:///system within 30 s"
exit 1
