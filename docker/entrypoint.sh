#!/bin/sh
# Container entry point: make sure the checkpoint is in Qwen/ (downloading it on the first start unless
# QWEN_OMNI_AUTO_DOWNLOAD=0), then run the command (the server) as PID 1's child-free replacement.
set -eu
if [ "${QWEN_OMNI_AUTO_DOWNLOAD:-1}" != "0" ]; then
  # A failed download must not crash-loop the container: the server still starts, /health answers,
  # and transcription requests explain what is missing (503).
  python3 -m serve.download "$@" || echo "entrypoint: the checkpoint is not available yet; see the message above" >&2
fi
exec "$@"
