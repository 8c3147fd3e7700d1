# syntax=docker/dockerfile:1.7
# nlpsuite serving image, CPU. Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t nlpsuite-cpu:0.1.0 .
# Bake a prebuilt model repository into the image (otherwise mount one at /models at run time):
#   docker build -f docker/cpu.Dockerfile --build-context models=./models -t nlpsuite-cpu:0.1.0-models .
# The serving image holds the runtime dependencies only (pyproject [project] dependencies): no torch,
# no [train] extra. onnxruntime-gpu runs on the CPU provider when no GPU is present.
# --- models: empty unless replaced with `--build-context models=<dir>` (BuildKit named context) ---
FROM scratch AS models

# --- build: a virtual environment with nlpsuite and its pinned runtime dependencies ---
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY nlpsuite/ nlpsuite/
COPY shared/ shared/
COPY services/ services/
COPY pipeline/ pipeline/
COPY examples/ examples/
# A regular (non-editable) install, so /src is not needed at run time; constraints pin every version.
RUN pip install --no-compile -c constraints.txt . \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the serving image" >&2; exit 1; fi

# --- runtime: non-root, no compilers, no source tree ---
# Same base as the build stage: the venv's interpreter links are valid here.
FROM python:3.11.14-slim-bookworm AS runtime
ARG NLPSUITE_UID=10001
LABEL org.opencontainers.image.title="nlpsuite (CPU)" \
      org.opencontainers.image.source="nlpsuite" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${NLPSUITE_UID}" nlpsuite \
    && useradd --system --uid "${NLPSUITE_UID}" --gid nlpsuite --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin nlpsuite \
    && mkdir -p /app /models \
    && ln -s /models /app/models
COPY --from=build /opt/venv /opt/venv
COPY --from=models --chown=root:root / /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# `models` (the services' default repository) resolves to /models from here.
WORKDIR /app
USER ${NLPSUITE_UID}:${NLPSUITE_UID}
# gRPC: sentiment 50051, chat 50052, recommend 50053; Prometheus metrics 9101-9103, monitor 9108.
EXPOSE 50051 50052 50053 9101 9102 9103 9108
HEALTHCHECK NONE
ENTRYPOINT ["nlpsuite"]
CMD ["serve", "sentiment"]
