#!/usr/bin/env bash
# Build the serving and training images (deploy/docker/*.Dockerfile) from the repository root:
# with Docker where an engine answers, otherwise with buildah (`bud --isolation chroot`, no daemon).
# Each image is built on its official base (python slim, rayproject/ray) when a registry serves it,
# else on a local Debian 12 + python3.11 base made here with debootstrap; the script says which.
#
#   scripts/images.sh [serve] [train]        both when none is named
#
# Settings (environment):
#   RECUR_IMAGE_TOOL=auto|docker|buildah     auto: docker if `docker info` answers, else buildah
#   RECUR_IMAGE_BASE=auto|official|local     auto: official if it can be pulled, else local
#   RECUR_IMAGES_CACHE=DIR                   the local base's work folder (outside the repository)
#   RECUR_IMAGE_NO_CACHE=1                   rebuild every step (the base stays if already made)
#   DEBIAN_MIRROR=URL                        debootstrap's mirror (default deb.debian.org)
# With buildah, the host's pip settings (index, extra indexes, find-links, CA bundle: `pip config
# list` and PIP_*) are lent to the build's RUN steps read-only under /run/recur-build, so a build
# behind a proxy or a local mirror installs what the host would; only empty mount points stay.
# `--install-tools` only installs buildah, podman and debootstrap (root and apt-get), then exits.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOL=${RECUR_IMAGE_TOOL:-auto}
BASE=${RECUR_IMAGE_BASE:-auto}
CACHE=${RECUR_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recur-images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/recur-base:bookworm-py311
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
RAY=$(sed -n 's/^ray==//p' constraints.txt)
# Each image's tag; its official base is the default of its Dockerfile's `ARG BASE_IMAGE=`.
declare -A TAG=([serve]="recur-serve:$VERSION" [train]="recur-train:$RAY-py311-recur$VERSION")

say() { echo "images: $*" >&2; }
die() { say "$*"; exit 2; }

install_tools() {
  local missing=()
  for tool in buildah podman debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install -y buildah podman" \
      "debootstrap, as root) or use a machine with a Docker engine"
  fi
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq buildah podman debootstrap >/dev/null
}

pick_tool() {
  if [ "$TOOL" = auto ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then TOOL=docker; else TOOL=buildah; fi
  fi
  [ "$TOOL" = buildah ] && install_tools
  say "building with $TOOL"
}

official_base() {  # the default of the Dockerfile's `ARG BASE_IMAGE=`
  sed -n 's/^ARG BASE_IMAGE=//p' "deploy/docker/$1.Dockerfile"
}

has_image() {
  if [ "$TOOL" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

pull() {  # quiet; fails fast where no registry resolves
  if [ "$TOOL" = docker ]; then timeout 1800 docker pull -q "$1" >/dev/null 2>&1
  else timeout 1800 buildah pull -q "docker.io/$1" >/dev/null 2>&1; fi
}

# Debian 12 minbase with python3.11, venv and CA certificates, trimmed like the slim images
# (no apt lists or caches, docs, man pages or locales), imported as $LOCAL_BASE.
make_local_base() {
  has_image "$LOCAL_BASE" && { say "local base $LOCAL_BASE already here"; return 0; }
  local start=$SECONDS
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to make the local base"
  command -v debootstrap >/dev/null || install_tools
  local rootfs="$CACHE/rootfs"
  mkdir -p "$CACHE" && rm -rf "$rootfs"
  say "making $LOCAL_BASE: debootstrap bookworm from $MIRROR into $rootfs"
  nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,man,locale,info}/*
  local changes=(--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --change "ENV LANG=C.UTF-8" --change 'CMD ["python3"]')
  if [ "$TOOL" = docker ]; then tar -C "$rootfs" -c . | docker import "${changes[@]}" - "$LOCAL_BASE"
  else tar -C "$rootfs" -c . | podman import -q "${changes[@]}" - "$LOCAL_BASE"; fi >/dev/null
  rm -rf "$rootfs"
  say "made $LOCAL_BASE in $((SECONDS - start)) s: $(megabytes "$LOCAL_BASE") MB"
}

# buildah -v arguments that lend the host's pip settings to RUN steps (see the header).
pip_mounts() {
  python3 - "$CACHE/build" <<'EOF'
import os, subprocess, sys
from pathlib import Path
from urllib.parse import urlparse

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                        capture_output=True, text=True).stdout.splitlines()
found = {}
for line in listed:  # global.cert='/x' and :env:.cert='/x' (the environment wins)
    key, _, value = line.partition("=")
    found.setdefault(key.rsplit(".", 1)[-1], []).append(value.strip("'\""))
settings = {k: v[-1] for k, v in found.items() if k in
            ("index-url", "extra-index-url", "find-links", "cert", "trusted-host", "timeout")}
mounts, n = [], 0
def lend(path):
    global n
    n += 1
    mounts.append(f"{path}:/run/recur-build/{n}:ro")
    return f"/run/recur-build/{n}"
def local(location):
    url = urlparse(location)
    if url.scheme == "file":
        path = Path(url.path)  # lend the folder above `simple/`: index pages link upwards
        root = path.parent if path.name == "simple" else path
        return location if not root.exists() else "file://" + lend(root) + url.path[len(str(root)):]
    if not url.scheme and Path(location).exists():
        return lend(location)
    return location
lines = ["[global]"]
for key, value in settings.items():
    if key == "cert":
        value = lend(value) if Path(value).is_file() else None
    elif key in ("index-url", "extra-index-url", "find-links"):
        value = " ".join(local(v) for v in value.split())
    if value:
        lines.append(f"{key} = {value}")
if len(lines) > 1:
    (out / "pip.conf").write_text("\n".join(lines) + "\n")
    mounts.append(f"{out / 'pip.conf'}:/etc/pip.conf:ro")
print("\n".join(f"--volume={m}" for m in mounts))
EOF
}

build() {  # name base
  local name=$1 base=$2 start=$SECONDS
  # buildah resolves short names through registries.conf; Docker's own default is docker.io.
  if [ "$TOOL" = buildah ] && [[ $base != localhost/* && ${base%%/*} != *.* ]]; then
    base=docker.io/$base
  fi
  local args=(-f "deploy/docker/$name.Dockerfile" --build-arg "BASE_IMAGE=$base" -t "${TAG[$name]}")
  [ "${RECUR_IMAGE_NO_CACHE:-0}" = 0 ] || args+=(--no-cache)
  say "building ${TAG[$name]} on $base"
  if [ "$TOOL" = docker ]; then
    nice -n 10 docker build "${args[@]}" .
  else
    local mounts
    mapfile -t mounts < <(pip_mounts)
    nice -n 10 buildah bud --isolation chroot --layers \
      --ignorefile "deploy/docker/$name.Dockerfile.dockerignore" "${mounts[@]}" "${args[@]}" .
  fi
  say "built ${TAG[$name]} on $base in $((SECONDS - start)) s: $(megabytes "${TAG[$name]}") MB"
}

megabytes() {  # an image's uncompressed size, in MB (10^6 bytes)
  local bytes
  if [ "$TOOL" = docker ]; then bytes=$(docker image inspect -f '{{.Size}}' "$1")
  else bytes=$(podman image inspect -f '{{.Size}}' "$1"); fi
  echo $((bytes / 1000000))
}

main() {
  if [ "${1:-}" = --install-tools ]; then install_tools; exit 0; fi
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=(serve train)
  pick_tool
  for name in "${names[@]}"; do
    [ -n "${TAG[$name]:-}" ] || die "unknown image $name (serve or train)"
    local official base
    official=$(official_base "$name")
    case "$BASE" in
      official) base=$official ;;
      local) make_local_base; base=$LOCAL_BASE ;;
      auto)
        if has_image "$official" || has_image "docker.io/$official" || pull "$official"; then
          base=$official
        else
          say "$official cannot be pulled (no registry reachable): using the local base"
          make_local_base
          base=$LOCAL_BASE
        fi ;;
      *) die "RECUR_IMAGE_BASE must be auto, official or local, not $BASE" ;;
    esac
    build "$name" "$base"
  done
}

main "$@"
