# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/demo.sh (sourced, not executed).
#
# Environment knobs:
#   BUILD_DIR    build directory            (default: build)
#   BUILD_TYPE   CMAKE_BUILD_TYPE           (default: Release: -O3, which the CPU kernels need to vectorise)
#   JOBS         parallel build/test jobs   (default: 2)
#   CMAKE_ARGS   extra arguments for the CMake configure step
#   SKIP_DEPS=1  do not run scripts/install-deps.sh

REDKNOT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REDKNOT_ROOT" || exit 1

BUILD_DIR="${BUILD_DIR:-build}"
BUILD_TYPE="${BUILD_TYPE:-Release}"
JOBS="${JOBS:-2}"

section() { printf '\n========== %s ==========\n' "$*"; }

install_deps() {
  if [[ "${SKIP_DEPS:-0}" == "1" ]]; then
    section "dependencies (skipped: SKIP_DEPS=1)"
  else
    section "dependencies"
    bash "$REDKNOT_ROOT/scripts/install-deps.sh"
  fi
  # `python3` may be a pyenv shim: hand CMake and pytest the real interpreter.
  PYTHON="$(python3 -c 'import sys; print(sys.executable)')"
}

configure() {
  section "configure ($BUILD_DIR, $BUILD_TYPE)"
  local args=(-S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DPython_EXECUTABLE="$PYTHON")
  # Ninja, unless the build dir was already configured with another generator.
  local cached_gen=""
  if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    cached_gen="$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$BUILD_DIR/CMakeCache.txt")"
  fi
  if [[ -z "$cached_gen" ]] && command -v ninja >/dev/null 2>&1; then
    args+=(-G Ninja)
  fi
  if command -v ccache >/dev/null 2>&1; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
    # Share cache hits between checkouts at different paths (CI clones afresh).
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$REDKNOT_ROOT}"
    export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
  fi
  # shellcheck disable=SC2206  # CMAKE_ARGS is split on purpose
  args+=(${CMAKE_ARGS:-})
  cmake "${args[@]}"
}

build() {
  section "build${1:+ (target $1)}"
  if command -v ccache >/dev/null 2>&1; then ccache --zero-stats >/dev/null 2>&1 || true; fi
  cmake --build "$BUILD_DIR" -j "$JOBS" ${1:+--target "$1"}
  if command -v ccache >/dev/null 2>&1; then
    echo "ccache ($(ccache --get-config cache_dir 2>/dev/null || echo '?')):"
    ccache --show-stats 2>/dev/null | grep -Ei '^ *(cacheable calls|hits|misses)' || true
  fi
}
