#!/usr/bin/env bash
# Regenerate gen/ (Python protobuf + gRPC code) from protos/. Generated code is committed
# apart from written code, and a test checks it is current.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gen}"
rm -rf "$out/magiclens"
mkdir -p "$out"
"${PYTHON:-python}" -m grpc_tools.protoc -Iprotos --python_out="$out" --pyi_out="$out" \
  --grpc_python_out="$out" protos/magiclens/v1/*.proto
touch "$out/magiclens/__init__.py" "$out/magiclens/v1/__init__.py"
