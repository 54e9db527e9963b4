# syntax=docker/dockerfile:1
# The serving image: recur-serve with ONNX Runtime and gRPC only. No torch, no Ray (DESIGN §1).
# Build from the repository root (or `make images`, which also builds without Docker):
#   docker build -f deploy/docker/serve.Dockerfile -t recur-serve:0.1.0 .
# Model bundles are not baked in: mount a model repository at /models.
#
# BASE_IMAGE: any Debian-like image with python3.11, venv and useradd. The default is the official
# one; scripts/images.sh builds a local Debian 12 base (debootstrap) where no registry is reachable.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm
FROM ${BASE_IMAGE}

# A virtual environment, so that the same steps work on the official image and on Debian's own
# python3.11, whose system site-packages pip refuses to touch (PEP 668).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/recur \
    PATH=/opt/recur/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RECUR_MODELS=/models

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY protos/ protos/
COPY settings/ settings/
COPY services/ services/
COPY clients/ clients/
# The wheel lists trainer/ as a package; its code is inert here without the `train` extra.
COPY trainer/ trainer/
# Exactly the `serve` extra at the versions of constraints.txt (tests/deploy replays this line).
# Then what serving never runs goes, about 40 MB (the image stays under 350 MB): pip and setuptools
# themselves, numpy's test suite, and the sources (the venv holds its own copy).
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install -c constraints.txt ".[serve]" \
    && python -m pip uninstall --yes --quiet pip setuptools \
    && find "$VIRTUAL_ENV" -depth -type d -name tests -path "*/numpy/*" -exec rm -rf {} + \
    && rm -rf /src

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN useradd --system --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin recur
USER 10001
WORKDIR /
VOLUME ["/models"]
# grpc, metrics
EXPOSE 50051 9464
ENTRYPOINT ["recur-serve"]
