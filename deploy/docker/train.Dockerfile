# syntax=docker/dockerfile:1
# The training image: Recur's trainer on the Ray image of the Ray version constraints.txt pins,
# so the KubeRay rayVersion, this base tag and the installed ray all agree.
# Build from the repository root (or `make images`, which also builds without Docker):
#   docker build -f deploy/docker/train.Dockerfile -t recur-train:2.60.0-py311-recur0.1.0 .
#
# BASE_IMAGE: the Ray image by default. scripts/images.sh builds on a local Debian 12 base with
# python3.11 (debootstrap) where no registry is reachable; Ray then comes from PyPI alone.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

# Ray, torch and Recur live in one virtual environment that comes first on PATH, so `ray start`
# (KubeRay's command), Ray's workers and `python -m trainer` all run the same interpreter on either
# base, and Debian's python3.11 (PEP 668) is left alone.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/recur \
    PATH=/opt/recur/bin:$PATH

USER root
# The Ray image's unprivileged user (uid 1000, group users), which KubeRay expects; other bases
# get one of the same name and ids. The trainer writes its runs under the working directory.
# KubeRay's probes run `bash -c "wget ... | grep success"` in every Ray pod: the Ray image has
# wget, other (Debian) bases get it from apt.
RUN (id -u 1000 >/dev/null 2>&1 \
    || useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray) \
    && install -d -o 1000 -g 100 /home/ray/recur \
    && (command -v wget >/dev/null || (apt-get update -qq \
        && apt-get install -y -qq --no-install-recommends wget \
        && apt-get clean && rm -rf /var/lib/apt/lists/*))
WORKDIR /home/ray/recur
COPY --chown=1000:100 pyproject.toml constraints.txt README.md ./
COPY --chown=1000:100 protos/ protos/
COPY --chown=1000:100 settings/ settings/
COPY --chown=1000:100 trainer/ trainer/
COPY --chown=1000:100 services/ services/
COPY --chown=1000:100 clients/ clients/
# The `train` extra (torch, ray[train], onnx) and `cluster` (ray[default]: the dashboard and job
# server of a KubeRay head) at the versions of constraints.txt.
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install -c constraints.txt ".[train,cluster]"

USER 1000
# For `docker run`; KubeRay replaces the command with `ray start ...` and submits
# `python -m trainer ...` as the job's entrypoint.
ENTRYPOINT ["recur-train"]
CMD ["--help"]
