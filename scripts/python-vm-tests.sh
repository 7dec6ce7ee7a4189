#!/usr/bin/env bash
# The Python suite inside the QEMU VM (dma-heap and udmabuf exist there):
# the abi3 wheel built by scripts/python-tests.sh, unpacked into a folder,
# run by the guest's Debian trixie Python with its python3-numpy and
# python3-pytest (vm/run.sh --userland). In the VM a skip is a failure.
#
#   scripts/python-vm-tests.sh [vm/run.sh options, e.g. --kernel 7]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t0=$(date +%s)
run=${DMABROKER_VM_RUN:-vm/run.sh}
if ! grep -q -- '--userland' "$run"; then
    echo "SKIP python-vm-tests: $run has no --userland (the VM's Debian userland with Python)" >&2
    exit 0
fi
compgen -G 'target/wheels/dmabroker-*.whl' >/dev/null || scripts/python-tests.sh --wheel-only
wheel=$(compgen -G 'target/wheels/dmabroker-*.whl' | head -1)
site="$PWD/target/py-vm/site"
rm -rf "$site"
mkdir -p "$site"
python3 -m zipfile -e "$wheel" "$site"
bin="$PWD/target/x86_64-unknown-linux-gnu/release/dmabroker"
"$run" --userland "$@" --dir "$site" --dir "$PWD/python/tests" --dir "$PWD/python/examples" --file "$bin" \
    --run "cd $PWD && PYTHONPATH=$site DMABROKER_BIN=$bin PYTHONDONTWRITEBYTECODE=1 \
python3 -m pytest -q -rs -p no:cacheprovider python/tests"
echo "python VM stage: $(($(date +%s) - t0)) s"
