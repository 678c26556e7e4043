#!/usr/bin/env bash
# A container base image made here from Debian's packages (no registry needed): Debian bookworm
# minbase + python3 (3.11) + python3-venv + ca-certificates, committed into buildah's local storage.
# The agent's Dockerfile builds on it with `--build-arg BASE=<tag>` where no base image can be pulled.
#
#   sudo scripts/container-base.sh                          # -> localhost/edgekit-base:bookworm (amd64 here)
#   sudo scripts/container-base.sh --arch arm64 --tag localhost/edgekit-base:bookworm-arm64
#                                                           # a Raspberry Pi base: needs qemu-user-static + binfmt
#   MIRROR=http://apt.example.lan/debian sudo scripts/container-base.sh   # a local Debian mirror
#
# Needs root, debootstrap and buildah (make test-debs installs both). buildah's storage is the
# default one unless CONTAINERS_STORAGE_CONF names another (the tests keep theirs in a cache dir).
# Prints the image id on the last line.
set -euo pipefail

ARCH=$(dpkg --print-architecture)
SUITE=bookworm
TAG=localhost/edgekit-base:bookworm
MIRROR=${MIRROR:-}

usage() { echo "usage: container-base.sh [--arch amd64|arm64] [--suite bookworm] [--tag NAME]"; }
die() { echo "container-base.sh: error: $*" >&2; exit 1; }
say() { echo "container-base.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="$2"; shift 2 ;;
    --suite) SUITE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root: debootstrap needs it (sudo $0)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed: apt-get install debootstrap (or make test-debs)"
command -v buildah >/dev/null 2>&1 || die "buildah is not installed: apt-get install buildah (or make test-debs)"

# On disk, not in a tmpfs: the root file system is ~150 MB before the tar copy.
WORK=$(mktemp -d /var/tmp/edgekit-base.XXXXXX)
CTR=""
cleanup() {
  [ -n "$CTR" ] && buildah rm "$CTR" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOTFS="$WORK/rootfs"

say "debootstrap $SUITE ($ARCH, minbase + python3, python3-venv, ca-certificates) in $ROOTFS"
T0=$(date +%s)
# shellcheck disable=SC2086  # MIRROR is empty (debootstrap's default mirror) or one URL
debootstrap --arch="$ARCH" --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOTFS" $MIRROR \
  > "$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
say "debootstrap took $(( $(date +%s) - T0 )) s"

# Slim it like the official slim images: no apt lists or caches, docs, man pages or translations,
# and dpkg told to skip them in images built on top. The host's resolv.conf and hostname that
# debootstrap copied would be wrong in a container (the runtime provides both).
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/01-edgekit-slim" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
CFG
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian/*
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
[ -x "$ROOTFS/usr/bin/python3" ] || die "the root has no /usr/bin/python3; see $WORK/debootstrap.log"

# --numeric-owner: the root's own uids/gids, not this host's names for them.
tar -C "$ROOTFS" --numeric-owner -cpf "$WORK/rootfs.tar" .
CTR=$(buildah from --arch "$ARCH" scratch)
buildah add "$CTR" "$WORK/rootfs.tar" / >/dev/null
buildah config --arch "$ARCH" --os linux \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd '["/usr/bin/python3"]' \
  --label org.opencontainers.image.description="Debian $SUITE minbase + python3, python3-venv, ca-certificates (edgekit scripts/container-base.sh)" \
  "$CTR"
ID=$(buildah commit --quiet --rm "$CTR" "$TAG")
CTR=""
say "committed $TAG ($(du -sm "$ROOTFS" | cut -f1) MB unpacked, $(chroot "$ROOTFS" python3 --version))"
echo "$ID"
