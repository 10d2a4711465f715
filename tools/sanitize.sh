#!/usr/bin/env bash
# Build the C++ core with AddressSanitizer + UndefinedBehaviorSanitizer (build/asan), run the C++
# unit tests (ctest), then the Python core tests against the sanitized extension. Any report aborts
# the run (-fno-sanitize-recover=all). Extra arguments go to pytest (default: the core test files).
#   tools/sanitize.sh                         # everything
#   tools/sanitize.sh tests/test_core.py -k loop
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build/asan"
python="$(command -v python3)"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFASTGEN_BUILD_TESTS=ON \
  -DFASTGEN_SANITIZE=address,undefined -DPython_EXECUTABLE="$python" \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build" -- -j"${JOBS:-2}"

# 1. C++ unit tests (leak checking on).
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir "$build" --output-on-failure

# 2. Python tests with the sanitized _core: a copy of the package next to the build; the ASan runtime
# preloaded (the Python interpreter is not instrumented), with libstdc++ (else ASan's __cxa_throw
# interceptor finds no real __cxa_throw and aborts on the first C++ exception); leak checking off (the
# interpreter does not free everything at exit).
rm -rf "$build/py" && mkdir -p "$build/py"
cp -r "$root/python/fastgen" "$build/py/"
rm -f "$build/py/fastgen/"_core*.so
cp "$build"/_core*.so "$build/py/fastgen/"
cd "$root"
if [ $# -eq 0 ]; then
  set -- tests/test_core.py tests/test_loop_fusion.py tests/test_video.py::test_frame_ring \
    tests/test_video.py::test_frame_ring_refuses_bad_pushes tests/test_video.py::test_frame_ring_refuses_bad_sizes
fi
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
  PYTHONPATH="$build/py:$root/export" "$python" -m pytest -q -p no:cacheprovider "$@"
