#!/usr/bin/env bash
# snakemake-image.sh - build local/snakemake:test, the image Snakemake's TES executor runs its
# jobs in (`snakemake --executor tes --container-image local/snakemake:test`): Debian's
# python3.11 (local/debian-python:test, scripts/debian-python-image.sh) plus this host's bash
# (the executor runs `/bin/bash run_snakemake.sh`) and the Snakemake venv's packages (Snakemake 9
# and its S3 storage plugin, installed by scripts/setup.sh from PyPI), with `docker create`,
# `docker cp` and `docker commit`, because no registry is reachable here. Idempotent: nothing to
# do when the image exists. Used by crates/cli/tests/snakemake_tes.rs.
set -euo pipefail

IMAGE=${1:-local/snakemake:test}
BASE=${CAAS_PYTHON_IMAGE:-local/debian-python:test}
VENV=${CAAS_SNAKEMAKE_VENV:-/opt/caas-snakemake-venv}
docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0
docker image inspect "$BASE" >/dev/null 2>&1 || "$(dirname "$0")/debian-python-image.sh" "$BASE"

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -d "$site/snakemake" ] || { echo "Snakemake is not installed in $VENV (scripts/setup.sh)" >&2; exit 1; }
root=$(mktemp -d)
cid=""
trap 'rm -rf "$root"; [ -z "$cid" ] || docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
mkdir -p "$root/usr/local/lib/python3.11/dist-packages" "$root/usr/local/bin" "$root/bin"
# The packages (pip itself stays out: nothing installs in the image).
tar -C "$site" --exclude='./pip' --exclude='./pip-*' --exclude='__pycache__' -cf - . |
  tar -C "$root/usr/local/lib/python3.11/dist-packages" -xf -
# bash, and the shared libraries it and the packages' extension modules need (libgcc_s,
# libstdc++, ...), from this host like the base's own.
cp -L /bin/bash "$root/bin/bash"
{ echo /bin/bash; find "$site" -name '*.so*' -type f; } | while read -r f; do
  { ldd "$f" 2>/dev/null || true; } | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
ln -s /usr/bin/python3 "$root/usr/local/bin/python"
printf '#!/usr/bin/python3\nimport sys\nfrom snakemake.cli import main\nsys.exit(main())\n' \
  >"$root/usr/local/bin/snakemake"
chmod 755 "$root/usr/local/bin/snakemake"
# Before each job, Snakemake's remote executors run `pip install --target
# .snakemake/pip-deployments <storage plugins>`, which needs PyPI; the image has no network to
# it, and the plugins are installed already, so for exactly that command this `pip` checks they
# are and stops there (anything else, or a plugin missing, goes to Debian's pip).
cat >"$root/usr/local/bin/pip" <<'SH'
#!/bin/sh
if [ "$1 $2 $3" = "install --target .snakemake/pip-deployments" ]; then
  shift 3
  python3 -c 'import importlib.metadata as m, sys; [m.version(p) for p in sys.argv[1:]]' "$@" 2>/dev/null && exit 0
fi
exec /usr/bin/pip "$@"
SH
chmod 755 "$root/usr/local/bin/pip"
cid=$(docker create "$BASE" true)
tar -C "$root" -cf - . | docker cp - "$cid:/"
docker commit \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV GIT_PYTHON_REFRESH=quiet' \
  --change 'ENV HOME=/tmp' \
  "$cid" "$IMAGE" >/dev/null
echo "built $IMAGE" >&2
