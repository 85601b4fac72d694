# syntax=docker/dockerfile:1
# One image for every regbench process: the API, the workers, the reconciler, the
# migrate step, Flower and the MLflow tracking server. docker-compose.yml picks the
# command per service.
#
#   docker build -t regbench:cpu .                        # CPU (python:3.11-slim)
#   docker build -t regbench:cuda --build-arg DEVICE=cuda .   # CUDA runtime + cuDNN
#   docker build -t regbench:cpu --build-arg TORCH_INDEX_URL=<index with CPU-only torch> .
#
# PyPI's torch wheel carries its own CUDA libraries; the CUDA base adds the runtime
# and cuDNN from NVIDIA for anything outside torch. Only the host's driver matters.

# cpu or cuda: which base stage the image is built on.
ARG DEVICE=cpu
# The CUDA base: CUDA 13.0 matches the pinned torch wheel (2.14.1+cu130).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu22.04

# --------------------------------------------------------------------------- bases
FROM python:3.11-slim-bookworm AS base-cpu
RUN python3.11 -m venv /opt/venv

FROM ${CUDA_IMAGE} AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

# --------------------------------------------------------------------------- the image
FROM base-${DEVICE}
# Optional: an index serving a CPU-only torch wheel (much smaller image). Empty: the
# torch of pyproject.toml from the default index.
ARG TORCH_INDEX_URL=""

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REGBENCH_DATA_DIR=/data

RUN useradd --create-home --uid 10001 --user-group regbench
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes. Without
# the packages the build of '.' is an empty regbench distribution plus all dependencies.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pins=$(grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"') \
         && pip install --index-url "$TORCH_INDEX_URL" $pins; \
       fi \
    && pip install '.[service]'

# The source. service/schema.py finds alembic.ini and migrations/ next to the packages,
# so the packages stay in /app (an editable install) instead of site-packages.
COPY alembic.ini ./
COPY migrations ./migrations
COPY regcore ./regcore
COPY service ./service
COPY api ./api
COPY worker ./worker
COPY client ./client
COPY examples ./examples
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --editable . \
    && regbench --version
# The commit every MLflow run is tagged with (regcore/provenance.py): .git is not in the
# image, so the build passes it (docker-compose.yml: GIT_COMMIT=$(git rev-parse HEAD)).
ARG GIT_COMMIT=""
ENV REGBENCH_GIT_COMMIT=${GIT_COMMIT}

# Mount points owned by the service user: a named volume mounted on an empty image
# directory takes its owner. /data is REGBENCH_DATA_DIR (runs/ holds the checkpoints
# a redelivered job resumes from), /app/data the specs' default dataset root
# (./data from the working directory), /mlartifacts the MLflow server's artifact store.
# No VOLUME instruction: it would leave an anonymous volume behind every container of
# this image, including the ones that never write there (api, flower, mlflow).
RUN mkdir -p /data/runs /app/data /mlartifacts \
    && chown -R regbench:regbench /data /app/data /mlartifacts

USER regbench
EXPOSE 8000 5000 5555
# No HEALTHCHECK here: the image runs workers and one-shot steps too; docker-compose.yml
# gives the API, MLflow and Flower their own.
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
