#!/usr/bin/env bash
# Smoke test of the images scripts/build-images.sh built (coordinator and
# trainer-cpu): each runs as uid 10001 on a read-only root with only
# /tmp/autolfads writable, as in the Argo Workflow.
#
#   scripts/test-images.sh --python .venv/bin/python
#
# Runs the containers with docker or podman where they can run containers,
# otherwise (as root) from buildah's storage: `buildah mount` the image, then
# in a private mount namespace bind its root read-only, put a tmpfs on
# /tmp/autolfads, bind the test's folders, and chroot as 10001:10001 with the
# image's environment, working directory and entrypoint.
#
# See --help. About a minute on 2 shared CPU cores.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1)

usage() {
  cat <<EOF
usage: scripts/test-images.sh [options]

Checks, each printed as ok/FAIL:
  - coordinator and trainer-cpu: the entrypoint answers --help and --version
    as uid 10001, with a read-only root (a write to /tmp fails, one to
    /tmp/autolfads works);
  - the coordinator image has no torch and no C compiler, and serves gRPC health;
  - the tiny search (examples/tiny_search.yaml) with stage + coordinator from
    the coordinator image and two trainers + finalize from the trainer-cpu
    image, sharing one file:// store, ends with the same best member, fitness,
    generation records and best/metrics.json as the same search run from the
    checkout with --python;
  - trainer-cpu trains: \`autolfads train\` with the config and data mounted
    read-only and the output folder mounted in (the image as an executable)
    gives the same metrics.json as the checkout.

  --python PY    a Python that imports autolfads (with the trainer extra) from
                 this checkout, for the reference runs (default: python3)
  --prefix NAME  image name prefix (default: ghcr.io/autolfads/autolfads-)
  --tag TAG      image tag (default: the package version, $VERSION)
  --tool TOOL    docker, podman or buildah (default: docker if its engine
                 answers, else podman if it can run a container, else buildah)
  --keep         keep the work folder (default: removed)
  -h, --help     this text

Writes build/images/test-result.txt.
EOF
}

die() {
  echo "test-images: error: $*" >&2
  exit 2
}

PY=python3
PREFIX=ghcr.io/autolfads/autolfads-
TAG=$VERSION
TOOL=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python | --prefix | --tag | --tool)
      if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
      case "$1" in
        --python) PY=$2 ;;
        --prefix) PREFIX=$2 ;;
        --tag) TAG=$2 ;;
        --tool) TOOL=$2 ;;
      esac
      shift 2
      ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
COORD=${PREFIX}coordinator:$TAG
TRAINER=${PREFIX}trainer-cpu:$TAG

# --- tool ----------------------------------------------------------------------
can_run() {  # can_run TOOL: does it run a container here?
  "$1" run --rm --network host --entrypoint true "$COORD" >/dev/null 2>&1
}
if [ -z "$TOOL" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    TOOL=docker
  elif command -v podman >/dev/null && can_run podman; then
    TOOL=podman
  elif command -v buildah >/dev/null; then
    TOOL=buildah
  else
    die "no container tool: install docker (with a running engine), podman or buildah, or pass --tool"
  fi
else
  case "$TOOL" in
    docker | podman | buildah) command -v "$TOOL" >/dev/null || die "--tool $TOOL: $TOOL is not on PATH" ;;
    *) die "--tool $TOOL: pass docker, podman or buildah" ;;
  esac
fi
if [ "$TOOL" = buildah ]; then
  [ "$(id -u)" -eq 0 ] || die "running images through buildah mount + chroot needs root; run as root or pass --tool docker|podman"
  for cmd in unshare chroot mount; do
    command -v "$cmd" >/dev/null || die "$cmd not found: it is needed to run images through buildah mount + chroot"
  done
fi
image_exists() {
  case "$TOOL" in
    docker | podman) "$TOOL" image inspect "$1" >/dev/null 2>&1 ;;
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
  esac
}
for image in "$COORD" "$TRAINER"; do
  image_exists "$image" || die "image $image is not in $TOOL's storage: build it with scripts/build-images.sh --targets coordinator,trainer-cpu, or pass --prefix/--tag"
done
found=$("$PY" -c 'import autolfads, os; print(os.path.dirname(os.path.dirname(os.path.realpath(autolfads.__file__))))' 2>/dev/null) ||
  die "--python $PY cannot import autolfads; pass --python PATH of a Python with this checkout installed (pip install -e '.[trainer]')"
[ "$found" = "$REPO" ] || die "--python $PY imports autolfads from $found, not this checkout ($REPO); pass --python PATH of a venv with pip install -e '.[trainer]' of it"
"$PY" -c 'import torch' 2>/dev/null || die "--python $PY has no torch; pass a Python with the trainer extra installed"

# --- work folder and cleanup -------------------------------------------------
W=$(mktemp -d /tmp/autolfads-image-test.XXXXXX)
chmod 755 "$W"
PIDS=()
CTRS=()
cleanup() {
  local pid ctr
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ctr in "${CTRS[@]}"; do
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
  done
  if [ "$KEEP" = 1 ]; then echo "test-images: work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# --- running an image ---------------------------------------------------------
declare -A ROOT ENVS ENTRY WORKDIR USERSPEC
if [ "$TOOL" = buildah ]; then
  for image in "$COORD" "$TRAINER"; do
    ctr=$(buildah from --pull-never "$image")
    CTRS+=("$ctr")
    ROOT[$image]=$(buildah mount "$ctr")
    ENVS[$image]=$(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$image")
    ENTRY[$image]=$(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$image")
    WORKDIR[$image]=$(buildah inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$image")
    USERSPEC[$image]=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
  done
  mkdir -p "$W/view"
fi

# In a private mount namespace: the image's root bound read-only at $view, a
# tmpfs on /tmp/autolfads, /dev and /proc, the test's folders; then chroot.
# shellcheck disable=SC2016  # expanded by the inner bash
INNER='
set -euo pipefail
root=$1 view=$2 user=$3 wd=$4 mounts=$5 envs=$6
shift 6
mount --rbind "$root" "$view"
mount -o remount,bind,ro "$view"
mount -t tmpfs -o mode=0755,uid=10001,gid=10001,size=2g tmpfs "$view/tmp/autolfads"
mount --rbind /dev "$view/dev"
mount --rbind /proc "$view/proc"
while IFS="|" read -r host target mode; do
  [ -n "$host" ] || continue
  [ -d "$view$target" ] || mkdir -p "$view$target"
  mount --bind "$host" "$view$target"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$view$target"; fi
done <<<"$mounts"
mapfile -t env_list <<<"$envs"
exec env -i "${env_list[@]}" chroot --userspec="$user" --groups="${user#*:}" "$view" \
  /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$wd" "$@"
'

# irun IMAGE [-v HOST:CTR[:ro]]... [-e K=V]... [--entrypoint CMD] -- ARGS...
# Runs the image as uid 10001, read-only root, /tmp/autolfads writable.
# Container paths of -v must lie under /tmp/autolfads.
irun() {
  local image=$1
  shift
  local vols=() envs=() entry="" a
  while [ "$1" != -- ]; do
    case "$1" in
      -v) vols+=("$2"); shift 2 ;;
      -e) envs+=("$2"); shift 2 ;;
      --entrypoint) entry=$2; shift 2 ;;
      *) die "irun: unexpected option '$1'" ;;
    esac
  done
  shift
  if [ "$TOOL" = buildah ]; then
    local mounts="" spec env_text cmd=()
    for spec in "${vols[@]}"; do
      IFS=: read -r h c m <<<"$spec"
      mounts+="$h|$c|${m:-rw}"$'\n'
    done
    env_text=${ENVS[$image]}
    for a in "${envs[@]}"; do env_text+=$'\n'"$a"; done
    if [ -n "$entry" ]; then cmd=("$entry"); else mapfile -t cmd <<<"${ENTRY[$image]}"; fi
    unshare --mount --propagation private bash -c "$INNER" inner \
      "${ROOT[$image]}" "$W/view" "${USERSPEC[$image]}" "${WORKDIR[$image]:-/}" \
      "$mounts" "$(grep -v '^$' <<<"$env_text")" "${cmd[@]}" "$@"
  else
    local opts=(--rm --read-only --user 10001:10001 --network host --cap-drop ALL
      --security-opt no-new-privileges
      --tmpfs "/tmp/autolfads:rw,mode=0755,uid=10001,gid=10001")
    for spec in "${vols[@]}"; do opts+=(-v "$spec"); done
    for a in "${envs[@]}"; do opts+=(-e "$a"); done
    if [ -n "$entry" ]; then opts+=(--entrypoint "$entry"); fi
    "$TOOL" run "${opts[@]}" "$image" "$@"
  fi
}

# --- checks --------------------------------------------------------------------
PASSED=0
FAILED=0
ok() { echo "ok   $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
check() {  # check NAME CMD...: ok if CMD exits 0 (its output goes to the log)
  local name=$1
  shift
  if "$@" >>"$W/checks.log" 2>&1; then ok "$name"; else fail "$name (see $W/checks.log; --keep keeps it)"; KEEP=1; fi
}
START=$(date +%s)
echo "test-images: $TOOL, images $COORD and $TRAINER, work folder $W"

ROFS_PROBE='
import os, sys
assert os.getuid() == 10001 and os.getgid() == 10001, (os.getuid(), os.getgid())
for path in ("/tmp/probe", "/probe", "/usr/local/lib/probe"):
    try:
        open(path, "w").close()
    except OSError:
        continue
    sys.exit(f"{path} is writable")
open("/tmp/autolfads/probe", "w").close()
'
for image in "$COORD" "$TRAINER"; do
  t=${image#"$PREFIX"}
  t=${t%:*}
  help_out() { irun "$image" -- --help | grep -q '^usage: autolfads'; }
  version_out() { [ "$(irun "$image" -- --version)" = "autolfads $VERSION" ]; }
  check "$t: --help as uid 10001 on a read-only root" help_out
  check "$t: --version says autolfads $VERSION" version_out
  check "$t: runs as 10001:10001; /tmp, / and /usr not writable, /tmp/autolfads writable" \
    irun "$image" --entrypoint python -- -c "$ROFS_PROBE"
done
check "coordinator: no torch, no C compiler" irun "$COORD" --entrypoint python -- -c \
  'import importlib.util as u, shutil, sys; sys.exit(u.find_spec("torch") is not None or any(shutil.which(c) for c in ("cc", "gcc", "clang")))'

# The tiny search, twice: from the images and from the checkout, same config.
CONFIG_DIR=$W/job/config
mkdir -p "$CONFIG_DIR" "$W/job/data" "$W/img/store" "$W/ref/store"
cp "$REPO/examples/tiny_search.yaml" "$CONFIG_DIR/"
RUN=$(sed -n 's/^name: *//p' "$CONFIG_DIR/tiny_search.yaml")
chown -R 10001:10001 "$W/job" "$W/img"

wait_all() {  # wait_all SECONDS PID...: wait for all; kill them past the deadline
  local deadline=$(($(date +%s) + $1)) pid rc=0
  shift
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "process $pid still running after the deadline: killed"
      kill "$pid" 2>/dev/null || true
    fi
    wait "$pid" || rc=1
  done
  return "$rc"
}
wait_file() {  # wait_file PATH PID SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
IMG_ARGS=(-v "$W/job:/tmp/autolfads/job" -v "$W/img:/tmp/autolfads/w")
search_from_images() {
  local store=file:///tmp/autolfads/w/store coord rc=0
  irun "$COORD" "${IMG_ARGS[@]}" -- stage /tmp/autolfads/job/config/tiny_search.yaml --storage "$store" || return 1
  irun "$COORD" "${IMG_ARGS[@]}" -e AUTOLFADS_LOG_LEVEL=INFO -- coordinator --storage "$store" --run "$RUN" \
    --listen 127.0.0.1:0 --port-file /tmp/autolfads/w/port --lease-timeout 30 >"$W/img/coordinator.log" 2>&1 &
  coord=$!
  PIDS+=("$coord")
  wait_file "$W/img/port" "$coord" 60 || { echo "coordinator did not start"; cat "$W/img/coordinator.log"; return 1; }
  PORT=$(cat "$W/img/port")
  # The Dockerfile's HEALTHCHECK, at this port.
  irun "$COORD" --entrypoint python -- -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c=grpc.insecure_channel('127.0.0.1:$PORT'); r=g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)" &&
    echo "health: SERVING" >"$W/img/health" || echo "health: not serving" >"$W/img/health"
  local trainers=()
  for w in w1 w2; do
    irun "$TRAINER" "${IMG_ARGS[@]}" -- trainer --coordinator "127.0.0.1:$PORT" --storage "$store" \
      --threads 1 --device cpu --worker-id "$w" --unavailable-wait 60 >"$W/img/$w.log" 2>&1 &
    trainers+=($!)
    PIDS+=($!)
  done
  wait_all 900 "${trainers[@]}" "$coord" || rc=1
  [ "$rc" = 0 ] || return 1
  irun "$TRAINER" "${IMG_ARGS[@]}" -- finalize --storage "$store" --run "$RUN" --device cpu
}
search_from_checkout() {
  local store=file://$W/ref/store coord rc=0 cfg=$W/ref/config/tiny_search.yaml
  mkdir -p "$W/ref/config"
  cp "$REPO/examples/tiny_search.yaml" "$cfg"
  "$PY" -m autolfads stage "$cfg" --storage "$store" || return 1
  AUTOLFADS_LOG_LEVEL=INFO "$PY" -m autolfads coordinator --storage "$store" --run "$RUN" \
    --listen 127.0.0.1:0 --port-file "$W/ref/port" --lease-timeout 30 >"$W/ref/coordinator.log" 2>&1 &
  coord=$!
  PIDS+=("$coord")
  wait_file "$W/ref/port" "$coord" 60 || { cat "$W/ref/coordinator.log"; return 1; }
  local trainers=()
  for w in w1 w2; do
    AUTOLFADS_CACHE_DIR=$W/ref/cache "$PY" -m autolfads trainer --coordinator "127.0.0.1:$(cat "$W/ref/port")" \
      --storage "$store" --threads 1 --device cpu --worker-id "$w" --unavailable-wait 60 >"$W/ref/$w.log" 2>&1 &
    trainers+=($!)
    PIDS+=($!)
  done
  wait_all 900 "${trainers[@]}" "$coord" || rc=1
  [ "$rc" = 0 ] || return 1
  AUTOLFADS_CACHE_DIR=$W/ref/cache "$PY" -m autolfads finalize --storage "$store" --run "$RUN" --device cpu
}
SUMMARY='
import hashlib, io, json, sys
import torch
from autolfads.coordinator.search.state import SearchState

def content_hash(blob):
    """SHA-256 of a checkpoint without "global_rng": that entry is the saving
    process'"'"'s own Python/numpy/torch RNG state, random in every process."""
    doc = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    doc.pop("global_rng", None)
    h = hashlib.sha256()
    def walk(x):
        if isinstance(x, dict):
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"[%d" % len(x))
            for v in x:
                walk(v)
        elif isinstance(x, torch.Tensor):
            h.update(str((x.dtype, tuple(x.shape))).encode())
            h.update(x.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(x).encode())
    walk(doc)
    return h.hexdigest()

from autolfads.storage import RunLayout, open_store
url, run = sys.argv[1:3]
store, layout = open_store(url, create_bucket=False), RunLayout(run)
state = SearchState.from_json(store.get_bytes(layout.state()))
best = state.best
n_gens = max((len(h) for h in state.history.values()), default=0)
gens = [store.get_json(layout.generation(g)) for g in range(n_gens)]
doc = {
    "status": state.status,
    "data": state.data_key,
    "best": {"member": best.member, "generation": best.generation, "metric": best.metric, "hparams": best.hparams},
    "best_checkpoint": content_hash(store.get_bytes(best.checkpoint)),
    "best_history": state.best_history,
    "generations": [{k: g.get(k) for k in ("ranking", "copies", "best_metric")} for g in gens],
    "metrics": store.get_json(layout.best("metrics.json")),
}
print(json.dumps(doc, indent=1, sort_keys=True))
'
t0=$(date +%s)
if search_from_images >"$W/img/search.log" 2>&1; then
  ok "tiny search from the images (stage + coordinator + 2 trainers + finalize): $(($(date +%s) - t0)) s"
else
  fail "tiny search from the images (log: $W/img/*.log)"
  KEEP=1
fi
if grep -q SERVING "$W/img/health" 2>/dev/null; then ok "coordinator: gRPC health SERVING"; else fail "coordinator: gRPC health"; fi
t0=$(date +%s)
if search_from_checkout >"$W/ref/search.log" 2>&1; then
  ok "tiny search from the checkout ($PY): $(($(date +%s) - t0)) s"
else
  fail "tiny search from the checkout (log: $W/ref/*.log)"
  KEEP=1
fi
"$PY" -c "$SUMMARY" "file://$W/img/store" "$RUN" >"$W/img/summary.json" 2>>"$W/checks.log" || true
"$PY" -c "$SUMMARY" "file://$W/ref/store" "$RUN" >"$W/ref/summary.json" 2>>"$W/checks.log" || true
if [ -s "$W/img/summary.json" ] && cmp -s "$W/img/summary.json" "$W/ref/summary.json"; then
  ok "same best from the images as from the checkout: $("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); b=d["best"]; print(b["member"], "generation", b["generation"], "fitness", repr(b["metric"]), "co_bps", repr(d["metrics"]["co_bps"]))' "$W/img/summary.json")"
else
  fail "best of the images' search differs from the checkout's (diff $W/img/summary.json $W/ref/summary.json)"
  diff "$W/img/summary.json" "$W/ref/summary.json" | head -n 20 || true
  KEEP=1
fi

# The image as an executable: config and data mounted read-only, output mounted in.
mkdir -p "$W/exe/in" "$W/exe/out"
cp "$REPO/examples/tiny_search.yaml" "$W/exe/in/"
cp -r "$W/job/data" "$W/exe/data"
chown -R 10001:10001 "$W/exe/out"
EPOCHS=3
train_from_image() {
  irun "$TRAINER" -v "$W/exe/in:/tmp/autolfads/in:ro" -v "$W/exe/data:/tmp/autolfads/data:ro" \
    -v "$W/exe/out:/tmp/autolfads/out" -- train /tmp/autolfads/in/tiny_search.yaml \
    --out /tmp/autolfads/out/tiny --epochs "$EPOCHS" --device cpu
}
check "trainer-cpu trains: autolfads train CONFIG with config and data mounted read-only" train_from_image
check "the same autolfads train from the checkout" \
  "$PY" -m autolfads train "$W/exe/in/tiny_search.yaml" --out "$W/exe/ref" --epochs "$EPOCHS" --device cpu
same_train() {
  "$PY" - "$W/exe/out/tiny/metrics.json" "$W/exe/ref/metrics.json" <<'EOF'
import json, math, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert math.isfinite(a["evaluation"]["co_bps"]), a
for doc in (a, b):
    doc["last_epoch"].pop("seconds")  # wall time
assert a == b, (a, b)
print("co_bps", a["evaluation"]["co_bps"])
EOF
}
check "train from the image gives the checkout's metrics.json exactly" same_train

# --- result ----------------------------------------------------------------------
size_of() {
  case "$TOOL" in
    buildah) buildah images --format '{{.Size}}' --filter "id=$(buildah inspect --type image --format '{{.FromImageID}}' "$1")" | head -n 1 ;;
    *) "$TOOL" image inspect --format '{{.Size}}' "$1" ;;
  esac
}
RESULT=$REPO/build/images/test-result.txt
mkdir -p "$(dirname "$RESULT")"
verdict=pass
[ "$FAILED" = 0 ] || verdict=FAIL
{
  echo "scripts/test-images.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) via $TOOL: $verdict ($PASSED ok, $FAILED failed) in $(($(date +%s) - START)) s"
  echo "$COORD $(size_of "$COORD")"
  echo "$TRAINER $(size_of "$TRAINER")"
} | tee "$RESULT"
[ "$FAILED" = 0 ]
