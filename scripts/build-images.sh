#!/usr/bin/env bash
# Builds the Dockerfile's images (coordinator, trainer-cpu, trainer-cuda) with
# docker when its engine is reachable, otherwise with buildah (or podman), and
# records each image's ID, digest, size and build time.
#
#   scripts/build-images.sh                                   # all three, torch from download.pytorch.org
#   scripts/build-images.sh --targets coordinator,trainer-cpu \
#     --base localhost/autolfads-base:bookworm --torch-wheels /opt/wheels
#
# See --help, deploy/argo/README.md ("Images") and scripts/test-images.sh.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ALL_TARGETS="coordinator,trainer-cpu,trainer-cuda"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1)

usage() {
  cat <<EOF
usage: scripts/build-images.sh [options]

Builds the images of ./Dockerfile and records their IDs, digests, sizes and
build times in build/images/images-TAG.txt.

  --targets LIST        comma-separated targets (default: $ALL_TARGETS)
  --base IMAGE          Python 3.11 base image (default: the Dockerfile's
                        python:3.11.13-slim-bookworm); without a registry, make
                        one with scripts/make-base-image.sh
  --torch-wheels DIR    install torch from a folder holding torch-VERSION*.whl
                        (the folder goes in as the build context 'torch-wheels';
                        add torch's dependencies there for an air-gapped site)
  --torch-index URL     install torch from this package index (a mirror of
                        download.pytorch.org/whl/cpu or .../whl/cu126)
                        (default: download.pytorch.org, the Dockerfile's)
  --torch-version V     torch version (default: the Dockerfile's, 2.13.0)
  --cuda-index NAME     PyTorch CUDA index for trainer-cuda (default: cu126)
  --package-index URL   index for every other package (default: PyPI)
  --prefix NAME         image name prefix (default: ghcr.io/autolfads/autolfads-)
  --tag TAG             image tag (default: the package version, $VERSION)
  --tool TOOL           docker, buildah or podman (default: docker if its engine
                        answers, else buildah, else podman)
  --record FILE         where to record the result (default:
                        build/images/images-TAG.txt)
  --no-cache            build every layer anew (default: reuse cached layers)
  -h, --help            this text

Heavy steps run under nice/ionice. Build logs: build/images/build-TARGET.log.
EOF
}

die() {
  echo "build-images: error: $*" >&2
  exit 2
}

TARGETS=$ALL_TARGETS
BASE=""
TORCH_WHEELS=""
TORCH_INDEX=""
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' "$REPO/Dockerfile" | head -n 1)
CUDA_INDEX=""
PACKAGE_INDEX=""
PREFIX=ghcr.io/autolfads/autolfads-
TAG=$VERSION
TOOL=""
RECORD=""
NO_CACHE=()

need_value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --targets | --base | --torch-wheels | --torch-index | --torch-version | --cuda-index | \
      --package-index | --prefix | --tag | --tool | --record)
      need_value "$@"
      case "$1" in
        --targets) TARGETS=$2 ;;
        --base) BASE=$2 ;;
        --torch-wheels) TORCH_WHEELS=$2 ;;
        --torch-index) TORCH_INDEX=$2 ;;
        --torch-version) TORCH_VERSION=$2 ;;
        --cuda-index) CUDA_INDEX=$2 ;;
        --package-index) PACKAGE_INDEX=$2 ;;
        --prefix) PREFIX=$2 ;;
        --tag) TAG=$2 ;;
        --tool) TOOL=$2 ;;
        --record) RECORD=$2 ;;
      esac
      shift 2
      ;;
    --no-cache) NO_CACHE=(--no-cache); shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# --- inputs, checked before anything is built ------------------------------
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
[ ${#TARGET_LIST[@]} -gt 0 ] || die "--targets is empty; pass some of $ALL_TARGETS"
NEEDS_TORCH=0
for t in "${TARGET_LIST[@]}"; do
  case "$t" in
    coordinator) ;;
    trainer-cpu | trainer-cuda) NEEDS_TORCH=1 ;;
    *) die "unknown target '$t'; pass --targets with some of $ALL_TARGETS" ;;
  esac
done
[ -n "$TORCH_VERSION" ] || die "no torch version found in the Dockerfile; pass --torch-version V"

TORCH_SOURCE="download.pytorch.org (the Dockerfile's default)"
if [ -n "$TORCH_WHEELS" ] && [ -n "$TORCH_INDEX" ]; then
  die "pass one torch source: --torch-wheels DIR or --torch-index URL, not both"
fi
if [ -n "$TORCH_WHEELS" ]; then
  [ -d "$TORCH_WHEELS" ] || die "--torch-wheels $TORCH_WHEELS is not a folder; pass a folder holding torch-$TORCH_VERSION*.whl"
  TORCH_WHEELS=$(cd "$TORCH_WHEELS" && pwd)
  mapfile -t wheels < <(find "$TORCH_WHEELS" -maxdepth 1 -name "torch-${TORCH_VERSION}[-+]*.whl" | sort)
  [ ${#wheels[@]} -gt 0 ] || die "--torch-wheels $TORCH_WHEELS holds no torch-$TORCH_VERSION*.whl; put one there (pip download torch==$TORCH_VERSION --no-deps -d DIR) or pass --torch-index URL"
  for t in "${TARGET_LIST[@]}"; do
    if [ "$t" = trainer-cuda ] && ! printf '%s\n' "${wheels[@]}" | grep -qv '+cpu-'; then
      die "--torch-wheels $TORCH_WHEELS holds only a CPU build of torch; trainer-cuda needs a CUDA one: pass a folder with it, --torch-index URL, or --targets without trainer-cuda"
    fi
  done
  TORCH_SOURCE="wheels in $TORCH_WHEELS ($(basename "${wheels[0]}"))"
elif [ -n "$TORCH_INDEX" ]; then
  case "$TORCH_INDEX" in
    http://* | https://*) ;;
    *) die "--torch-index $TORCH_INDEX is not an http(s) URL; for a local folder of wheels pass --torch-wheels DIR" ;;
  esac
  TORCH_SOURCE="index $TORCH_INDEX"
fi

probe() {  # probe URL: does an http(s) URL answer at all (any HTTP status)?
  if command -v curl >/dev/null; then
    curl -sS -o /dev/null --max-time 15 "$1" 2>/dev/null
  else
    return 0  # cannot tell; the build will say
  fi
}
if [ "$NEEDS_TORCH" = 1 ] && [ -z "$TORCH_WHEELS" ]; then
  if [ -n "$TORCH_INDEX" ]; then
    url=${TORCH_INDEX%/}/torch/
  else
    url=https://download.pytorch.org/whl/cpu/torch/
  fi
  probe "$url" || die "torch source $url is not reachable from here; pass --torch-wheels DIR (a folder holding torch-$TORCH_VERSION*.whl) or --torch-index URL (a reachable mirror)"
fi
if [ -n "$PACKAGE_INDEX" ]; then
  case "$PACKAGE_INDEX" in
    http://* | https://*) ;;
    *) die "--package-index $PACKAGE_INDEX is not an http(s) URL" ;;
  esac
fi

# --- build tool ------------------------------------------------------------
if [ -z "$TOOL" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    TOOL=docker
  elif command -v buildah >/dev/null; then
    TOOL=buildah
  elif command -v podman >/dev/null; then
    TOOL=podman
  elif command -v docker >/dev/null; then
    die "docker is installed but its engine does not answer (docker info failed) and buildah is not on PATH: start the engine, or install buildah (apt-get install buildah) and run again"
  else
    die "no build tool: install docker (with a running engine) or buildah (apt-get install buildah), or pass --tool"
  fi
else
  case "$TOOL" in
    docker | buildah | podman) command -v "$TOOL" >/dev/null || die "--tool $TOOL: $TOOL is not on PATH" ;;
    *) die "--tool $TOOL: pass docker, buildah or podman" ;;
  esac
  if [ "$TOOL" = docker ] && ! docker info >/dev/null 2>&1; then
    die "--tool docker: the docker engine does not answer (docker info failed); start it or pass --tool buildah"
  fi
fi

NICE=(nice -n 19)
if command -v ionice >/dev/null; then NICE+=(ionice -c3); fi

# --- base image --------------------------------------------------------------
BASE_ARG=()
BASE_SHOWN=${BASE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO/Dockerfile" | head -n 1)}
if [ -n "$BASE" ]; then BASE_ARG=(--build-arg "PYTHON_IMAGE=$BASE"); fi
base_present() {
  case "$TOOL" in
    docker) docker image inspect "$BASE_SHOWN" >/dev/null 2>&1 ;;
    *) "$TOOL" inspect --type image "$BASE_SHOWN" >/dev/null 2>&1 ;;
  esac
}
if ! base_present; then
  pull_err=$(timeout 300 "$TOOL" pull -q "$BASE_SHOWN" 2>&1 >/dev/null) || {
    reason=$(printf '%s\n' "$pull_err" | grep -v '^\s*$' | tail -n 1 |
      sed -e 's/^Error: //' -e 's/^initializing source [^ ]*: //' | cut -c1-200)
    die "base image '$BASE_SHOWN' is not in $TOOL's local storage and could not be pulled (${reason:-no reason given}); pass --base IMAGE: a reachable image or a local one (scripts/make-base-image.sh builds one from Debian packages)"
  }
fi
base_id() {
  case "$TOOL" in
    docker) docker image inspect --format '{{.Id}}' "$BASE_SHOWN" ;;
    *) "$TOOL" inspect --type image --format '{{.FromImageID}}' "$BASE_SHOWN" ;;
  esac
}
BASE_ID=$(base_id)

# --- build -------------------------------------------------------------------
OUT=$REPO/build/images
mkdir -p "$OUT"
RECORD=${RECORD:-$OUT/images-$TAG.txt}
COMMON=(-f "$REPO/Dockerfile" "${NO_CACHE[@]}" "${BASE_ARG[@]}" --build-arg "TORCH_VERSION=$TORCH_VERSION")
if [ -n "$TORCH_WHEELS" ]; then COMMON+=(--build-context "torch-wheels=$TORCH_WHEELS"); fi
if [ -n "$TORCH_INDEX" ]; then COMMON+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX"); fi
if [ -n "$CUDA_INDEX" ]; then COMMON+=(--build-arg "CUDA_INDEX=$CUDA_INDEX"); fi
if [ -n "$PACKAGE_INDEX" ]; then COMMON+=(--build-arg "PACKAGE_INDEX_URL=$PACKAGE_INDEX"); fi
case "$TOOL" in
  buildah) BUILD=(buildah bud --isolation "${BUILDAH_ISOLATION:-chroot}" --layers) ;;
  podman) BUILD=(podman build --layers) ;;
  docker) BUILD=(docker build) ;;
esac

image_info() {  # image_info REF -> "ID DIGEST SIZE"
  case "$TOOL" in
    docker)
      docker image inspect --format '{{.Id}} {{if .RepoDigests}}{{index .RepoDigests 0}}{{else}}-{{end}} {{.Size}}B' "$1"
      ;;
    *)
      local id digest size
      id=$("$TOOL" inspect --type image --format '{{.FromImageID}}' "$1")
      digest=$("$TOOL" inspect --type image --format '{{.FromImageDigest}}' "$1")
      size=$("$TOOL" images --format '{{.Size}}' --filter "id=$id" | head -n 1 | tr -d ' ')
      echo "sha256:$id $digest $size"
      ;;
  esac
}

{
  echo "# scripts/build-images.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $TOOL on $(uname -m)"
  echo "# base $BASE_SHOWN (sha256:${BASE_ID#sha256:}); torch $TORCH_VERSION from $TORCH_SOURCE"
  echo "# commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  printf '# %s\t%s\t%s\t%s\t%s\t%s\n' target image id digest size build_s
} >"$RECORD.partial"  # replaces the last record only once every target built

for t in "${TARGET_LIST[@]}"; do
  ref=$PREFIX$t:$TAG
  log=$OUT/build-$t.log
  echo "build-images: $t -> $ref ($TOOL; log $log)"
  start=$(date +%s)
  if ! "${NICE[@]}" "${BUILD[@]}" "${COMMON[@]}" --target "$t" -t "$ref" "$REPO" >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    die "building $t failed (full log: $log)"
  fi
  secs=$(($(date +%s) - start))
  read -r id digest size < <(image_info "$ref")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$ref" "$id" "$digest" "$size" "$secs" >>"$RECORD.partial"
  echo "build-images: $t built in $secs s: $size, $id"
done
mv "$RECORD.partial" "$RECORD"
echo "build-images: recorded in $RECORD"
