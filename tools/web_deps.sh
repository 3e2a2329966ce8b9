#!/usr/bin/env bash
# What the web portal's browser tests need: Debian's chromium (never a browser download),
# fonts for the Chinese and Russian screenshots, and web/node_modules installed from
# web/package-lock.json (npm ci: Lit, qrcode-generator, axe-core, jsqr, playwright-core).
# Idempotent; needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(chromium fonts-wqy-microhei fonts-dejavu-core)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
(cd web && npm ci --no-audit --no-fund --loglevel=error)
# The vendored Lit and qrcode-generator in web/public must be what the lockfile gives.
node web/tools/vendor.mjs --check
