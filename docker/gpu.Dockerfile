# syntax=docker/dockerfile:1.7
# nlpsuite serving image, GPU: CUDA 13 + cuDNN 9 runtime base, which onnxruntime-gpu 1.31 needs
# (libcublasLt.so.13, libcudnn.so.9), and TensorRT 10. Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t nlpsuite-gpu:0.1.0 .
# Bake a prebuilt model repository into the image (otherwise mount one at /models at run time):
#   docker build -f docker/gpu.Dockerfile --build-context models=./models -t nlpsuite-gpu:0.1.0-models .
# Runtime dependencies only: no torch, no [train] extra.
# --- models: empty unless replaced with `--build-context models=<dir>` (BuildKit named context) ---
FROM scratch AS models

# --- build: the same Ubuntu release and Python (3.12) as the CUDA runtime base ---
FROM ubuntu:24.04 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=3.12.*" "python3-venv=3.12.*" \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY nlpsuite/ nlpsuite/
COPY shared/ shared/
COPY services/ services/
COPY pipeline/ pipeline/
COPY examples/ examples/
RUN pip install --no-compile -c constraints.txt . \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the serving image" >&2; exit 1; fi
# TensorRT 10 for CUDA 13, the libraries onnxruntime-gpu 1.31's TensorRT provider links against (libnvinfer.so.10,
# libnvonnxparser.so.10); the PyPI package is a stub that fetches NVIDIA's wheel from pypi.nvidia.com.
# --build-arg TENSORRT_VERSION= (empty) leaves it out: the services then run on the CUDA provider.
ARG TENSORRT_VERSION=10.16.1.11
RUN if [ -n "${TENSORRT_VERSION}" ]; then \
      pip install --no-compile --no-deps -c constraints.txt --extra-index-url https://pypi.nvidia.com \
        "tensorrt-cu13-libs==${TENSORRT_VERSION}" \
      && test -e /opt/venv/lib/python3.12/site-packages/tensorrt_libs/libnvinfer.so.10 \
      && test -e /opt/venv/lib/python3.12/site-packages/tensorrt_libs/libnvonnxparser.so.10; \
    fi

# --- runtime: CUDA + cuDNN runtime libraries, Python, the venv; non-root ---
# CUDA 13.0 runtime libraries (cuBLAS, cuFFT, ...) and cuDNN 9 on Ubuntu 24.04, the build stage's release.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS runtime
ARG NLPSUITE_UID=10001
ENV DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="nlpsuite (GPU, CUDA 13)" \
      org.opencontainers.image.source="nlpsuite" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=3.12.*" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${NLPSUITE_UID}" nlpsuite \
    && useradd --system --uid "${NLPSUITE_UID}" --gid nlpsuite --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin nlpsuite \
    && mkdir -p /app /models \
    && ln -s /models /app/models
COPY --from=build /opt/venv /opt/venv
COPY --from=models --chown=root:root / /models/
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
USER ${NLPSUITE_UID}:${NLPSUITE_UID}
EXPOSE 50051 50052 50053 9101 9102 9103 9108
HEALTHCHECK NONE
ENTRYPOINT ["nlpsuite"]
CMD ["serve", "sentiment"]
