#!/usr/bin/env bash
# The Python bindings' stage: build the abi3 wheel with maturin, install it
# into a fresh venv under target/ and run pytest there with no Rust
# toolchain on PATH (the wheel must import without one).
#
#   scripts/python-tests.sh [--wheel-only]   (--wheel-only: build target/wheels/ and stop)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t0=$(date +%s)
venv=target/pyenv
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q maturin numpy pytest
rm -rf target/wheels
# The root build's +crt-static cannot link a cdylib: the bindings build without it.
env -u RUSTFLAGS "$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o target/wheels
[[ ${1:-} == --wheel-only ]] && exit 0
run=target/pyenv-run
rm -rf "$run"
python3 -m venv "$run"
"$run/bin/pip" install -q numpy pytest
"$run/bin/pip" install -q target/wheels/dmabroker-*.whl
# No cargo/rustc on PATH from here on.
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export DMABROKER_BIN="$PWD/target/x86_64-unknown-linux-gnu/release/dmabroker"
(cd / && "$OLDPWD/$run/bin/python" -c 'import dmabroker; print("imported", dmabroker.__file__)')
"$run/bin/pytest" -q -rs python/tests
echo "python stage: $(($(date +%s) - t0)) s"
