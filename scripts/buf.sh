#!/usr/bin/env bash
# Run the buf CLI (npm @bufbuild/buf, pinned) on protos/, installing it into .tools/ once.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION="1.75.0"
bin=".tools/node_modules/.bin/buf"
if [[ ! -x "$bin" ]] || [[ "$("$bin" --version 2>/dev/null)" != "$BUF_VERSION" ]]; then
  command -v npm >/dev/null || { echo "buf: npm is needed to install @bufbuild/buf" >&2; exit 3; }
  npm install --silent --no-audit --no-fund --prefix .tools "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
cd protos
exec "../$bin" "$@"
