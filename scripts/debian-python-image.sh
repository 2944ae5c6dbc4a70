#!/usr/bin/env bash
# debian-python-image.sh - build local/debian-python:test, a base like a Debian 12 image with its
# system Python (python3, pip, venv from Debian's packages, and Debian's EXTERNALLY-MANAGED
# marker, so a bare `pip install` fails with PEP 668's "externally-managed-environment"), with
# `docker import`, because no registry is reachable here. It is made from this host's own
# Debian packages (scripts/setup.sh installs python3, python3-pip and python3-venv) on top of the
# busybox base's files; the `caas new --template python` test builds on it
# (crates/cli/tests/python_template.rs). Idempotent: nothing to do when the image exists.
set -euo pipefail

IMAGE=${1:-local/debian-python:test}
BASE=${CAAS_BASE_IMAGE:-local/busybox:test}
docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0

pkgs="python3 python3-minimal python3.11 python3.11-minimal libpython3.11-minimal
      libpython3.11-stdlib python3-pip python3-pip-whl python3-setuptools-whl python3-venv
      python3.11-venv python3-pkg-resources python3-setuptools python3-distutils
      python3-lib2to3 python3-wheel"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cid=$(docker create "$BASE" true)
docker export "$cid" | tar -C "$root" -x
docker rm "$cid" >/dev/null
list=$root/.files
for p in $pkgs; do
  dpkg -L "$p" 2>/dev/null || true
done | while read -r f; do
  if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\n' "${f#/}"; fi
done | sort -u >"$list"
grep -q '^usr/bin/python3.11$' "$list" || { echo "Debian's python3.11 is not installed" >&2; exit 1; }
tar -C / -cf - --no-recursion -T "$list" | tar -C "$root" -xf -
# The shared libraries of every program and extension module among them, and the loader.
grep -E '(^usr/bin/|\.so)' "$list" | while read -r f; do
  { ldd "/$f" 2>/dev/null || true; } | awk '/=> \// {print $3} /^\s*\/lib/ {print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
rm -f "$list"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "built $IMAGE" >&2
