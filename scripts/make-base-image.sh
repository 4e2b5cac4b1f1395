#!/usr/bin/env bash
# Builds a Python 3.11 base image close to python:3.11-slim-bookworm from
# Debian packages (debootstrap), for machines that can reach a Debian mirror
# but no container registry. Its name is what scripts/build-images.sh --base
# takes.
#
#   sudo scripts/make-base-image.sh                          # -> localhost/autolfads-base:bookworm
#   sudo scripts/make-base-image.sh --name my/base:1 --mirror http://deb.example/debian
#
# Needs root, debootstrap and buildah. About 2 minutes on 2 CPU cores.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/make-base-image.sh [--name IMAGE] [--suite SUITE] [--mirror URL] [--ca-bundle FILE]

Builds a Debian (debootstrap --variant=minbase) image with python3, pip and
venv, `python`/`pip` on PATH and pip allowed to install into the system
Python, then commits it to buildah's local storage as IMAGE.

  --name IMAGE      image name (default: localhost/autolfads-base:bookworm)
  --suite SUITE     Debian release (default: bookworm, whose python3 is 3.11)
  --mirror URL      Debian mirror (default: http://deb.debian.org/debian)
  --ca-bundle FILE  CA bundle the image's pip trusts, e.g. a site proxy's
                    (default: /etc/ssl/certs/ca-certificates.crt of this machine
                    if it exists, else the Debian one)
EOF
}

die() {
  echo "make-base-image: error: $*" >&2
  exit 2
}

NAME=localhost/autolfads-base:bookworm
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=${2:?}; shift 2 ;;
    --suite) SUITE=${2:?}; shift 2 ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    --ca-bundle) CA_BUNDLE=${2:?}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1' (see --help)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run it as root (sudo scripts/make-base-image.sh)"
command -v debootstrap >/dev/null || die "debootstrap not found: install it (apt-get install debootstrap)"
command -v buildah >/dev/null || die "buildah not found: install it (apt-get install buildah)"
if [ ! -f "$CA_BUNDLE" ]; then
  CA_BUNDLE=""
fi

# Heavy steps run at low priority: build machines are often shared.
NICE=(nice -n 19)
if command -v ionice >/dev/null; then NICE+=(ionice -c3); fi

WORK=$(mktemp -d)
ROOTFS=$WORK/rootfs
LOG=$WORK/debootstrap.log
ctr=""
cleanup() {
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
echo "make-base-image: debootstrap $SUITE from $MIRROR (log: $LOG)"
if ! "${NICE[@]}" debootstrap --variant=minbase \
  --include=python3,python3-pip,python3-venv,ca-certificates,passwd \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$LOG" 2>&1; then
  tail -n 5 "$LOG" >&2
  trap - EXIT  # keep the log
  die "debootstrap of '$SUITE' from $MIRROR failed (log kept: $LOG); pass --mirror URL for a reachable Debian mirror"
fi

# What python:3.11-slim provides and the Dockerfile relies on: `python` and
# `pip` commands, and pip installing into the system interpreter (PEP 668's
# marker removed: the image is the environment).
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
if [ -n "$CA_BUNDLE" ]; then
  cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi
# Slim: no package lists, caches, docs or locales.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log
find "$ROOTFS/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} +

ctr=$(buildah from scratch)
# tar preserves owners, modes and links; buildah copy would not keep setuid bits.
mnt=$(buildah mount "$ctr")
tar -C "$ROOTFS" -cf - . | tar -C "$mnt" -xpf -
buildah umount "$ctr" >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd python3 \
  --label org.opencontainers.image.description="Debian $SUITE minbase + python3 (scripts/make-base-image.sh)" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$NAME" >/dev/null
ctr=""
id=$(buildah inspect --type image --format '{{.FromImageID}}' "$NAME")
size=$(buildah images --format '{{.Size}}' --filter "id=$id" | head -n 1)
echo "make-base-image: $NAME ($id, $size) in $(($(date +%s) - start)) s"
