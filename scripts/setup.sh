#!/usr/bin/env bash
# setup.sh - make this machine ready to run caas and its tests (idempotent, root, Debian 12).
#
# Brings up what caas needs and cannot pull from a registry:
#   1. the Docker engine (Debian's docker.io), started with dockerd when `docker info` fails;
#   2. the base image local/busybox:test, made with `docker import` from Debian's busybox-static
#      (no registry is reachable here, so every image caas's examples and tests use starts from it);
#   3. tmux, the pseudo-terminal the `caas shell` tests type into;
#   4. an S3 API server on 127.0.0.1:$CAAS_S3_PORT (moto's server mode, from PyPI in the venv
#      /opt/caas-venv, which also holds the AWS CLI the tests use as an independent client, and
#      prometheus-client, whose parser the tests read GET /metrics with);
#   5. a Slurm cluster of 3 nodes on this host for the Slurm executor's tests, with the
#      project's own scripts/slurm.sh (Debian's slurm-wlm + munge, accounting with MariaDB +
#      slurmdbd so `sacct` works, and the node engines: rootful and rootless Podman,
#      Charliecloud, with the unprivileged user caaslab): ~60 s the first time (packages),
#      ~1 s when all runs;
#   6. Debian's chromium and chromium-driver, the headless browser the web page's test drives
#      (crates/cli/tests/browser.rs starts chromedriver itself; nothing runs in the background);
#   7. local/debian-python:test, a Debian-like base with its system Python (python3-pip and
#      python3-venv from Debian, PEP 668 marker included) for the python template's test,
#      made by scripts/debian-python-image.sh with `docker import`.
# `setup.sh --run-only` (what scripts/quickstart.sh uses) stops after 2: the main job needs only
# the engine and the base image; 3 to 7 belong to the tests.
# A second run with nothing to do takes well under a second.
set -euo pipefail

BASE_IMAGE=${CAAS_BASE_IMAGE:-local/busybox:test}
RUN_ONLY=0
[ "${1:-}" = "--run-only" ] && RUN_ONLY=1
log() { printf '[caas setup] %s\n' "$*" >&2; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "$@" >/tmp/caas-setup-apt.log 2>&1; then
    apt-get update >/tmp/caas-setup-apt-update.log 2>&1
    apt-get install -y --no-install-recommends "$@" >/tmp/caas-setup-apt.log 2>&1 || {
      cat /tmp/caas-setup-apt.log >&2; exit 1; }
  fi
}

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
[ "$RUN_ONLY" = 1 ] || command -v tmux >/dev/null 2>&1 || need_pkgs+=(tmux)
[ "$RUN_ONLY" = 1 ] || [ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
[ "$RUN_ONLY" = 1 ] || [ -x /usr/bin/chromedriver ] || need_pkgs+=(chromium-driver)
# Debian's system Python, for the Debian-python base of the python template's test (7.).
[ "$RUN_ONLY" = 1 ] || [ -x /usr/bin/pip3 ] || need_pkgs+=(python3-pip)
[ "$RUN_ONLY" = 1 ] || dpkg -s python3-venv >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# The data-source tests make a private CA and a loopback HTTPS server certificate.
[ "$RUN_ONLY" = 1 ] || command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { log "missing ${need_pkgs[*]}; run this script as root to install them"; exit 1; }
  log "installing ${need_pkgs[*]}"
  apt_install "${need_pkgs[@]}"
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  # setsid + no inherited stdio: the daemon must not hold CI's output pipes open.
  ( setsid dockerd </dev/null >/var/log/caas-dockerd.log 2>&1 & )
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/caas-dockerd.log"; tail -20 /var/log/caas-dockerd.log >&2; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "building $BASE_IMAGE from busybox-static"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,etc,tmp,root,home/user} "$root"/usr/bin
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  ln -s ../../bin/env "$root/usr/bin/env"
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
  chown 1000:1000 "$root/home/user"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/bin:/usr/bin' --change 'CMD ["sh"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"; trap - EXIT
fi

if [ "$RUN_ONLY" = 1 ]; then
  log "ready: docker $(docker version -f '{{.Server.Version}}'), base image $BASE_IMAGE"
  exit 0
fi

# 7. local/debian-python:test: a base like Debian's with its system Python (PEP 668), made from
#    this host's Debian packages (a few seconds, once).
"$(dirname "$0")/debian-python-image.sh" local/debian-python:test

S3_PORT=${CAAS_S3_PORT:-5055}
VENV=${CAAS_VENV:-/opt/caas-venv}
# The Python tools the tests use as independent clients and readers, resolved together in one
# pip run (so one package's pins never break another's):
#   moto[server] (the S3 API server) and awscli (an independent S3 client);
#   schemathesis 4 (checks the API against its OpenAPI document);
#   prometheus-client (parses GET /metrics);
#   rocrate and runcrate (read the provenance crates);
#   py-tes (a real TES client), httpx, pytest, wheel (the Python package's tests and install),
#   openapi-spec-validator (checks the served TES document).
PY_PKGS=('moto[server]' awscli 'schemathesis>=4,<5' prometheus-client rocrate runcrate
  'py-tes==1.1.4' 'httpx>=0.27' 'pytest>=8' wheel openapi-spec-validator)
py_ready() {
  [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/aws" ] && [ -x "$VENV/bin/schemathesis" ] &&
    [ -x "$VENV/bin/runcrate" ] &&
    "$VENV/bin/python" -c 'import prometheus_client, rocrate, tes, httpx, pytest, wheel, openapi_spec_validator' >/dev/null 2>&1
}
if ! py_ready; then
  log "installing the tests' Python tools into $VENV (one pip run)"
  command -v python3 >/dev/null 2>&1 || apt_install python3
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q "${PY_PKGS[@]}" >/tmp/caas-setup-pip.log 2>&1 || {
    cat /tmp/caas-setup-pip.log >&2; exit 1; }
fi
# Snakemake 9 with its TES executor, in a venv of its own: the executor (0.1.3) pins
# py-tes<0.5, which the py-tes 1.1 tests above cannot share (crates/cli/tests/tes_compat.rs).
SMK_VENV=${CAAS_SNAKEMAKE_VENV:-/opt/caas-snakemake-venv}
SMK_PKGS=('snakemake>=9,<10' 'snakemake-executor-plugin-tes==0.1.3' snakemake-storage-plugin-s3)
if ! { [ -x "$SMK_VENV/bin/snakemake" ] &&
  "$SMK_VENV/bin/python" -c 'import tes, snakemake_executor_plugin_tes, snakemake_storage_plugin_s3' >/dev/null 2>&1; }; then
  log "installing Snakemake and its TES executor into $SMK_VENV"
  [ -x "$SMK_VENV/bin/pip" ] || python3 -m venv "$SMK_VENV"
  "$SMK_VENV/bin/pip" install -q "${SMK_PKGS[@]}" >/tmp/caas-setup-smk.log 2>&1 || {
    cat /tmp/caas-setup-smk.log >&2; exit 1; }
fi
CAAS_SNAKEMAKE_VENV="$SMK_VENV" "$(dirname "$0")/snakemake-image.sh" local/snakemake:test
s3_up() { python3 - "$S3_PORT" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)
except Exception as e:
    sys.exit(0 if hasattr(e, "code") else 1)
PY
}
if ! s3_up; then
  log "starting moto S3 server on 127.0.0.1:$S3_PORT"
  ( setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" </dev/null >/var/log/caas-moto.log 2>&1 & )
  for _ in $(seq 1 60); do s3_up && break; sleep 0.5; done
  s3_up || { log "moto did not start; see /var/log/caas-moto.log"; tail -20 /var/log/caas-moto.log >&2; exit 1; }
fi

bash "$(dirname "$0")/slurm.sh" >/tmp/caas-setup-slurm.log 2>&1 || {
  tail -20 /tmp/caas-setup-slurm.log >&2; log "Slurm did not start; see /tmp/caas-setup-slurm.log"; exit 1; }
slurm_note="Slurm up"

log "ready: docker $(docker version -f '{{.Server.Version}}'), base image $BASE_IMAGE, S3 at http://127.0.0.1:$S3_PORT, $slurm_note, chromium $(dpkg-query -W -f='${Version}' chromium 2>/dev/null)"
