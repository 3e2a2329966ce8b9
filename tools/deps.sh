#!/usr/bin/env bash
# Installs the Debian packages Atrium builds and tests with. Idempotent; needs root (or sudo).
# clang-14 and libFuzzer build the fuzz targets (tools/fuzz.sh); libclang-rt-14-dev also holds
# fuzzer/FuzzedDataProvider.h, which the normal build's corpus replay uses.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config ccache
      libpistache-dev librocksdb-dev nlohmann-json3-dev libvirt-dev prometheus-cpp-dev
      doctest-dev libsodium-dev libssl-dev libyaml-dev libicu-dev libcurl4-openssl-dev
      clang-14 libclang-rt-14-dev libfuzzer-14-dev
      libvirt-daemon libvirt-clients wrk nginx-light prometheus curl openssl
      libldap-dev liboath-dev slapd ldap-utils
      postgresql libpq-dev)
# The OpenAPI linter runs with npx; a machine that already has Node.js keeps its own.
command -v npx >/dev/null 2>&1 || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # slapd: the tests start their own (tools/ldap_test_server.sh); no system directory is
  # configured or started by the package.
  echo 'slapd slapd/no_configuration boolean true' | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
