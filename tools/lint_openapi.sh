#!/usr/bin/env bash
# Validates openapi.yaml with a real OpenAPI linter from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
npx --yes @redocly/cli@1 lint --format=stylish openapi.yaml
