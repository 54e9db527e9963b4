# syntax=docker/dockerfile:1
# The training image: Recur's trainer on the Ray image of the Ray version constraints.txt pins,
# so the KubeRay rayVersion, this base tag and the installed ray all agree.
# Build from the repository root:
#   docker build -f deploy/docker/train.Dockerfile -t recur-train:2.60.0-py311-recur0.1.0 .
FROM rayproject/ray:2.60.0-py311

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /home/ray/recur
COPY --chown=1000:100 pyproject.toml constraints.txt README.md ./
COPY --chown=1000:100 protos/ protos/
COPY --chown=1000:100 trainer/ trainer/
COPY --chown=1000:100 services/ services/
COPY --chown=1000:100 clients/ clients/
# The `train` extra (torch, ray[train], onnx) at the versions of constraints.txt; ray==2.60.0 is
# already in the base image, so pip keeps it.
RUN pip install -c constraints.txt ".[train]"

# The Ray image's own unprivileged user (uid 1000), which KubeRay expects.
USER 1000
# For `docker run`; KubeRay replaces the command with `ray start ...` and submits
# `python -m trainer ...` as the job's entrypoint.
ENTRYPOINT ["recur-train"]
CMD ["--help"]
