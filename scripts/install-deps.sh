#!/usr/bin/env bash
# Install everything needed to build and test redknot on Debian (bookworm).
# Idempotent, and quick when everything is already there: apt is only touched
# when a package is missing, pip only when a module cannot be imported.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore

log() { printf '[install-deps] %s\n' "$*"; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -E)
  else
    log "not root and sudo is not available" >&2
    exit 1
  fi
fi

# Debian packages (catch2 v3 comes from bookworm-backports, see below).
# clang + libclang-rt-14-dev: the libFuzzer targets (scripts/fuzz.sh); llvm-14: llvm-symbolizer for sanitizer
# stack traces. GCC's own libasan/libubsan (the --sanitize build) come with g++.
# redis-server + redis-tools + libhiredis-dev: the remote tier (redknot::redis) and its tests, which run against
# a loopback Redis Cluster that scripts/redis-cluster.sh starts on its own ports.
APT_PACKAGES=(cmake g++ ninja-build ccache nlohmann-json3-dev pybind11-dev
              libbenchmark-dev libopenblas-dev zlib1g-dev libxxhash-dev clang libclang-rt-14-dev llvm-14
              redis-server redis-tools libhiredis-dev)
CATCH2_PACKAGES=(catch2 libcatch2-dev)   # on bookworm-backports catch2 3.x pulls libcatch2-dev

codename=""
if [[ -r /etc/os-release ]]; then
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi

# Print the packages of "$@" that are not installed (one dpkg-query call).
missing_packages() {
  local status
  status="$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)"
  local pkg
  for pkg in "$@"; do
    if ! grep -q "^${pkg} install ok installed\$" <<<"$status"; then
      echo "$pkg"
    fi
  done
}

catch2_is_v3() {
  local v
  v="$(dpkg-query -W -f='${Version}' catch2 2>/dev/null || true)"
  [[ "$v" =~ ^3\. ]]
}

apt_updated=0
apt_update() {
  if [[ $apt_updated -eq 0 ]]; then
    local try
    for try in 1 2 3; do
      if "${SUDO[@]}" apt-get update -qq; then apt_updated=1; return 0; fi
      log "apt-get update failed (try $try), retrying"; sleep 5
    done
    return 1
  fi
}

apt_install() {
  "${SUDO[@]}" apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "$@"
}

has_backports_source() {
  local f files=(/etc/apt/sources.list)
  shopt -s nullglob
  files+=(/etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  shopt -u nullglob
  for f in "${files[@]}"; do
    [[ -r "$f" ]] || continue
    if grep -v '^[[:space:]]*#' "$f" | grep -q 'bookworm-backports'; then
      return 0
    fi
  done
  return 1
}

ensure_backports_source() {
  if has_backports_source; then return 0; fi
  log "adding bookworm-backports apt source"
  "${SUDO[@]}" tee /etc/apt/sources.list.d/redknot-backports.sources >/dev/null <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_updated=0
}

# --- Debian packages --------------------------------------------------------
mapfile -t missing < <(missing_packages "${APT_PACKAGES[@]}")
mapfile -t missing_catch2 < <(missing_packages "${CATCH2_PACKAGES[@]}")
if [[ ${#missing_catch2[@]} -eq 0 ]] && ! catch2_is_v3; then
  missing_catch2=("${CATCH2_PACKAGES[@]}")   # catch2 2.x installed: upgrade to 3.x
fi

if [[ ${#missing[@]} -gt 0 || ${#missing_catch2[@]} -gt 0 ]]; then
  log "missing Debian packages: ${missing[*]} ${missing_catch2[*]}"
  if [[ ${#missing_catch2[@]} -gt 0 && "$codename" == "bookworm" ]]; then
    ensure_backports_source
  fi
  apt_update
  if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
  fi
  if printf '%s\n' "${missing[@]}" | grep -qx redis-server; then
    # Debian's package enables and starts a redis-server on port 6379; the tests use their own cluster
    # (scripts/redis-cluster.sh), so the system service is stopped and disabled.
    log "stopping and disabling the redis-server system service (the project's cluster uses its own ports)"
    if [[ -d /run/systemd/system ]]; then
      "${SUDO[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
    else
      "${SUDO[@]}" service redis-server stop >/dev/null 2>&1 || true
      "${SUDO[@]}" update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
  fi
  if [[ ${#missing_catch2[@]} -gt 0 ]]; then
    if [[ "$codename" == "bookworm" ]]; then
      apt_install -t bookworm-backports "${CATCH2_PACKAGES[@]}"
    else
      apt_install "${CATCH2_PACKAGES[@]}"
    fi
  fi
  if ! catch2_is_v3; then
    log "Catch2 v3 is required but catch2 $(dpkg-query -W -f='${Version}' catch2 2>/dev/null) is installed" >&2
    exit 1
  fi
fi

# --- Python -----------------------------------------------------------------
# `python3` may be a pyenv shim; work with the real interpreter behind it.
if ! command -v python3 >/dev/null 2>&1; then
  log "python3 not found: installing Debian's"
  apt_update
  apt_install python3 python3-dev python3-pip python3-venv
fi
PY="$(python3 -c 'import sys; print(sys.executable)')"

py_is_system=0
case "$PY" in /usr/bin/*) py_is_system=1 ;; esac

# Python.h for pybind11 (pyenv builds ship it; Debian's python needs python3-dev).
if ! "$PY" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
  if [[ $py_is_system -eq 1 ]]; then
    log "Python headers missing: installing python3-dev"
    apt_update
    apt_install python3-dev
  else
    log "warning: no Python.h for $PY; the Python module will not configure" >&2
  fi
fi

# module name -> pip package name
# redis (redis-py): python/tests/test_redis_tier.py reads and writes RedisTier objects with redis.cluster.RedisCluster.
declare -A PIP_PACKAGES=([numpy]=numpy [pytest]=pytest [scikit_build_core]=scikit-build-core [pybind11]=pybind11
                         [redis]=redis)
mapfile -t missing_py < <("$PY" - "${!PIP_PACKAGES[@]}" <<'EOF'
import importlib.util, sys
for name in sys.argv[1:]:
    if importlib.util.find_spec(name) is None:
        print(name)
EOF
)
if [[ ${#missing_py[@]} -gt 0 ]]; then
  pip_names=()
  for m in "${missing_py[@]}"; do pip_names+=("${PIP_PACKAGES[$m]}"); done
  log "installing Python packages for $PY: ${pip_names[*]}"
  pip_args=(install --quiet --no-input)
  if [[ $py_is_system -eq 1 ]]; then
    # Debian's python is "externally managed" (PEP 668).
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
      apt_update
      apt_install python3-pip
    fi
    pip_args+=(--break-system-packages)
    "${SUDO[@]}" "$PY" -m pip "${pip_args[@]}" "${pip_names[@]}"
  else
    "$PY" -m pip "${pip_args[@]}" "${pip_names[@]}"
  fi
  # pyenv: make sure shims for new console scripts (pytest) exist.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
fi

log "all dependencies present (python: $PY)"
