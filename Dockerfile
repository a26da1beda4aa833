# The one image every pipeline component and the tracking server run in (named by components/image.py; override it
# at compile time with MEDGAN_IMAGE). Two stages: the builder installs the project with every dependency pinned by
# requirements.lock into a virtual environment; the runtime stage copies that environment, adds git (DVC and the
# lineage read git history) and runs as a non-root user.
#
#   CPU:  docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t REGISTRY/medgan-ops:0.1.0 .
#   GPU:  docker build --build-arg VARIANT=cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#           --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t REGISTRY/medgan-ops:0.1.0-cuda .
#
# The base is pinned to a patch release; pin it to its digest (python:3.11.11-slim-bookworm@sha256:...) in your
# registry mirror for bit-for-bit rebuilds. tests/test_dockerfile.py lints this file with hadolint.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# torch first, from the index that matches the target hardware, at the version the project is tested with
# (requirements.lock leaves torch out for that reason).
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0
COPY requirements.lock pyproject.toml README.md ./
COPY components ./components
COPY pipeline ./pipeline
# -c requirements.lock: every dependency at the locked version (the lock's dev tools are constraints only).
RUN pip install -c requirements.lock . \
    && python -c "import components, pipeline, kfp, kfp.kubernetes, mlflow, monai, pydicom, dvc, dvc_s3, boto3, psycopg2"

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="medgan-ops" \
      org.opencontainers.image.description="MLOps pipeline: versioned DICOM to an evaluated, registered class-conditional GAN" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/medgan-ops/medgan-ops" \
      io.medgan-ops.variant="${VARIANT}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    GX_ANALYTICS_ENABLED=false \
    MEDGAN_GIT_COMMIT=${GIT_COMMIT} \
    MEDGAN_HOME=/workspace
# git follows Debian's security updates of the pinned release; pinning its exact version would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group medgan \
    && mkdir -p /workspace \
    && chown medgan:medgan /workspace
COPY --from=builder /opt/venv /opt/venv
# The uid the manifests and kubernetes.run_as_user expect (runAsNonRoot needs it numeric).
USER 10001
WORKDIR /workspace
ENTRYPOINT ["medgan"]
CMD ["--help"]
