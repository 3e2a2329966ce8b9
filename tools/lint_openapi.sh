#!/usr/bin/env bash
# Validates openapi.yaml with a real OpenAPI linter from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
# Pinned: @redocly/cli@1 resolves to 1.34.21, whose dependency @redocly/respect-core@1.34.21
# is not published, so `npx @redocly/cli@1` fails to install. 1.34.20 installs and lints.
# Rules are configured in redocly.yaml.
npx --yes @redocly/cli@1.34.20 lint --format=stylish openapi.yaml
