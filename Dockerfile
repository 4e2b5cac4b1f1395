# syntax=docker/dockerfile:1.7
# autolfads container images, one Dockerfile with three targets:
#
#   docker build --target coordinator  -t autolfads-coordinator:0.1.0 .
#   docker build --target trainer-cpu  -t autolfads-trainer-cpu:0.1.0 .
#   docker build --target trainer-cuda -t autolfads-trainer-cuda:0.1.0 .
#
# Every image runs the `autolfads` command (ENTRYPOINT), so a pod's args are
# exactly the command line a user runs locally: `autolfads coordinator ...`.
# Images run as an unprivileged user (uid 10001) and need no writable root
# filesystem: the Workflow mounts an emptyDir at /tmp/autolfads.

# scripts/build-images.sh builds all three with docker or buildah and records
# their digests; scripts/test-images.sh smoke-tests them.

# Pinned base (patch release + Debian release). Pin by digest in your registry
# mirror for bit-for-bit rebuilds: --build-arg PYTHON_IMAGE=python@sha256:...
# Without a registry: scripts/make-base-image.sh builds one with debootstrap.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG TORCH_VERSION=2.13.0
# Where packages come from. Defaults: PyPI, and PyTorch's own index for torch.
#   PACKAGE_INDEX_URL  an index for every other package (a site mirror of PyPI)
#   TORCH_INDEX_URL    an index for torch (default: download.pytorch.org/whl/cpu
#                      for trainer-cpu, .../whl/${CUDA_INDEX} for trainer-cuda)
#   --build-context torch-wheels=DIR
#                      a folder holding torch-${TORCH_VERSION}*.whl (and, for an
#                      air-gapped site, its dependencies): installed from there,
#                      TORCH_INDEX_URL unused
ARG PACKAGE_INDEX_URL=""
ARG TORCH_INDEX_URL=""

# The default for the torch-wheels build context: empty, so torch comes from
# an index.
FROM scratch AS torch-wheels

# ---------------------------------------------------------------------------
# Build the autolfads wheel once; every target installs the same file.
FROM ${PYTHON_IMAGE} AS wheel
ARG PACKAGE_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md ./
COPY autolfads ./autolfads
COPY trainer ./trainer
COPY storage ./storage
COPY coordinator ./coordinator
COPY katib ./katib
COPY proto ./proto
COPY deploy/argo ./deploy/argo
RUN pip wheel --no-cache-dir --no-deps ${PACKAGE_INDEX_URL:+--index-url "$PACKAGE_INDEX_URL"} \
    --wheel-dir /wheels .

# ---------------------------------------------------------------------------
# Common runtime: non-root user, writable work dir, no bytecode writes.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp/autolfads \
    MPLCONFIGDIR=/tmp/autolfads/matplotlib \
    AUTOLFADS_CACHE_DIR=/tmp/autolfads/cache
RUN groupadd --gid 10001 autolfads \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp/autolfads \
       --shell /usr/sbin/nologin autolfads \
    && mkdir -p /tmp/autolfads && chown 10001:10001 /tmp/autolfads
WORKDIR /tmp/autolfads

# ---------------------------------------------------------------------------
# Coordinator (also runs `stage`): base dependencies only, no torch.
FROM runtime AS coordinator
ARG PACKAGE_INDEX_URL
COPY --from=wheel /wheels /wheels
RUN pip install ${PACKAGE_INDEX_URL:+--index-url "$PACKAGE_INDEX_URL"} /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None"
USER 10001:10001
EXPOSE 50051
# Docker/Compose health check; Kubernetes uses its native gRPC probe instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c=grpc.insecure_channel('127.0.0.1:50051'); r=g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["autolfads"]
CMD ["--help"]

# ---------------------------------------------------------------------------
# CPU trainer (also runs `finalize` and `report`): torch from the CPU index.
FROM runtime AS trainer-cpu
ARG TORCH_VERSION
ARG PACKAGE_INDEX_URL
ARG TORCH_INDEX_URL
# From a folder of wheels: the +cpu build when there is one (a folder may hold
# CUDA builds too), else whatever torch of that version it holds.
RUN --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    wheel=$( (find /torch-wheels -maxdepth 1 -name "torch-${TORCH_VERSION}+cpu-*.whl"; \
              find /torch-wheels -maxdepth 1 -name "torch-${TORCH_VERSION}[-+]*.whl" | sort) | head -n 1); \
    if [ -n "$wheel" ]; then \
      pip install --find-links /torch-wheels ${PACKAGE_INDEX_URL:+--index-url "$PACKAGE_INDEX_URL"} "$wheel"; \
    else \
      pip install --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "torch==${TORCH_VERSION}"; \
    fi
COPY --from=wheel /wheels /wheels
RUN pip install ${PACKAGE_INDEX_URL:+--index-url "$PACKAGE_INDEX_URL"} "$(ls /wheels/*.whl)[trainer,report]" \
    && rm -rf /wheels
USER 10001:10001
ENTRYPOINT ["autolfads"]
CMD ["--help"]

# ---------------------------------------------------------------------------
# CUDA trainer: torch wheels that bundle the CUDA runtime (the node supplies
# only the driver, through the NVIDIA device plugin / container toolkit).
FROM runtime AS trainer-cuda
ARG TORCH_VERSION
ARG CUDA_INDEX=cu126
ARG PACKAGE_INDEX_URL
ARG TORCH_INDEX_URL
# Never a +cpu build from the folder: the CUDA image must get CUDA kernels.
RUN --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    wheel=$(find /torch-wheels -maxdepth 1 -name "torch-${TORCH_VERSION}[-+]*.whl" | grep -v '+cpu-' | sort | head -n 1); \
    if [ -n "$wheel" ]; then \
      pip install --find-links /torch-wheels ${PACKAGE_INDEX_URL:+--index-url "$PACKAGE_INDEX_URL"} "$wheel"; \
    else \
      pip install --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${CUDA_INDEX}}" "torch==${TORCH_VERSION}"; \
    fi
COPY --from=wheel /wheels /wheels
RUN pip install ${PACKAGE_INDEX_URL:+--index-url "$PACKAGE_INDEX_URL"} "$(ls /wheels/*.whl)[trainer,report]" \
    && rm -rf /wheels
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
ENTRYPOINT ["autolfads"]
CMD ["--help"]
