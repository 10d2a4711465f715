#!/usr/bin/env bash
# Development build of the C++ core: compiles fastgen._core into python/fastgen/ (gitignored).
# Serialised with a lock so parallel callers don't clobber each other.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/build/dev"
exec 9>"$root/build/dev/.lock"
flock 9
if [ ! -f "$root/build/dev/build.ninja" ]; then
  cmake -S "$root" -B "$root/build/dev" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTGEN_DEV_INPLACE=ON \
    -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
fi
cmake --build "$root/build/dev" -- -j2
