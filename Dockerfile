# Qwen2.5-Omni transcription server: GPU image.
#   docker build -t qwen2.5-omni-app:latest .
#   docker-compose --profile awq up -d
#
# torch 2.13.0 from PyPI is built against CUDA 13.0 (driver 580+), so the runtime base is CUDA 13.0
# (newer than 12.8: RTX 50-series cards work). For an older driver, build against CUDA 12.8 wheels:
#   docker build --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t qwen2.5-omni-app .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# DL3008 (apt versions unpinned) is ignored on purpose: the CUDA base image follows Ubuntu's security
# updates, and exact versions of ffmpeg and Python would break every rebuild; the Python stack is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ffmpeg ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app

# Dependencies first, code last: editing serve/ rebuilds only the final layers.
ARG TORCH_INDEX_URL=""
COPY requirements.txt ./
# With TORCH_INDEX_URL set, pip prefers that index's torch==2.13.0+cuXXX (a local version sorts above 2.13.0).
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.txt

# FlashAttention 2 is optional: use a prebuilt wheel (FLASH_ATTN_WHEEL=<url or file>, or one PyPI has for
# this torch/CUDA/Python), never a source build (an hour of nvcc). Without it the server uses SDPA.
ARG FLASH_ATTN_WHEEL=""
ARG FLASH_ATTN_VERSION=2.8.3.post2
# DL3013 is ignored here: FLASH_ATTN_WHEEL is a URL or file, which pins the exact build by itself.
# hadolint ignore=DL3013
RUN if [ -n "$FLASH_ATTN_WHEEL" ]; then pip install --no-deps "$FLASH_ATTN_WHEEL"; \
    else pip install --no-deps --only-binary=:all: "flash-attn==$FLASH_ATTN_VERSION" \
         || echo "no prebuilt flash-attn wheel for this torch/CUDA/Python: the server will use SDPA"; fi

# Ubuntu 24.04 images ship a uid 1000 "ubuntu" user; replace it so that files written to bind mounts
# (./Qwen, ./outputs) belong to the usual first host user.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin app \
    && mkdir -p /app/inputs /app/temp /app/outputs /app/data /app/Qwen /home/app/.cache/huggingface \
    && chown -R app:app /app /home/app/.cache

COPY --chown=app:app docker/entrypoint.sh /usr/local/bin/qwen-omni-entrypoint
COPY --chown=app:app serve/ /app/serve/
# The real-model tools: the GPU smoke test (with its two clips) and the WER/CER evaluation
COPY --chown=app:app scripts/smoke_gpu.py scripts/evaluate.py /app/scripts/
COPY --chown=app:app scripts/smoke/ /app/scripts/smoke/

USER 1000:1000
ENV HF_HOME=/home/app/.cache/huggingface \
    QWEN_OMNI_SERVER=gunicorn \
    QWEN_OMNI_HOST=0.0.0.0 \
    QWEN_OMNI_PORT=5000
EXPOSE 5000

# The first start may download the model (about 11 GB) before the server listens.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import json, os, sys, urllib.request; port = os.environ.get('QWEN_OMNI_PORT', '5000'); body = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=8)); sys.exit(body.get('status') != 'ok')"]

ENTRYPOINT ["qwen-omni-entrypoint"]
CMD ["python3", "serve/qwen2_5_omni_awq.py", "--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ", "--local-model"]
