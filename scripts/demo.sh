#!/usr/bin/env bash
# Build and run the capacity demo (benchmarks/capacity_demo.cpp) with its
# defaults. Arguments are passed on to the demo. See scripts/common.sh for knobs.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_deps
configure
build redknot_capacity_demo

section "redknot_capacity_demo"
exec "$BUILD_DIR/benchmarks/redknot_capacity_demo" "$@"
