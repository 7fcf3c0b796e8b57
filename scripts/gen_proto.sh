#!/usr/bin/env bash
# Regenerate the committed Python modules for conch/proto/**/*.proto.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repo root, in place)
# Uses $PYTHON, else .venv/bin/python, else python3; needs grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
mkdir -p "$out"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mapfile -t protos < <(find conch/proto -name '*.proto' | LC_ALL=C sort)
mapfile -t services < <(grep -l '^service ' "${protos[@]}" | LC_ALL=C sort)
"$PYTHON" -m grpc_tools.protoc -I. --python_out="$out" --pyi_out="$out" "${protos[@]}"
# _pb2_grpc.py only for files that define services
"$PYTHON" -m grpc_tools.protoc -I. --grpc_python_out="$out" "${services[@]}"
