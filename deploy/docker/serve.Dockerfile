# syntax=docker/dockerfile:1
# The serving image: recur-serve with ONNX Runtime and gRPC only. No torch, no Ray (DESIGN §1).
# Build from the repository root:
#   docker build -f deploy/docker/serve.Dockerfile -t recur-serve:0.1.0 .
# Model bundles are not baked in: mount a model repository at /models.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECUR_MODELS=/models

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY protos/ protos/
COPY services/ services/
COPY clients/ clients/
# The wheel lists trainer/ as a package; its code is inert here without the `train` extra.
COPY trainer/ trainer/
# Exactly the `serve` extra at the versions of constraints.txt (tests/deploy replays this line).
RUN pip install -c constraints.txt ".[serve]"

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN useradd --system --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin recur
USER 10001
WORKDIR /
VOLUME ["/models"]
# grpc, metrics
EXPOSE 50051 9464
ENTRYPOINT ["recur-serve"]
