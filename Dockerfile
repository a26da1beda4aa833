# The one image every pipeline component runs in (named by components/image.py; override with MEDGAN_IMAGE).
# CPU build by default; for GPU nodes build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG GIT_COMMIT=unknown
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GX_ANALYTICS_ENABLED=false \
    MEDGAN_GIT_COMMIT=${GIT_COMMIT} \
    MEDGAN_HOME=/workspace

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medgan
# torch first, from the index that matches the target hardware, pinned to the version the project is tested on.
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipeline ./pipeline
RUN pip install . && python -c "import components, pipeline, kfp, mlflow, monai, pydicom"

RUN useradd --create-home --uid 10001 medgan && mkdir -p /workspace && chown medgan /workspace
USER 10001
WORKDIR /workspace
ENTRYPOINT ["medgan"]
CMD ["--help"]
