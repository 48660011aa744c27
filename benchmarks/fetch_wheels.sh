#!/usr/bin/env bash
# Download the pure-Python wheels that the GPU machine lacks into .whl/ (git-ignored), for a
# device call that has no network: pint and its dependencies (adex imports pint), and
# SpikingJelly 2.0 with the two small packages it imports that the machine does not have
# (the roofline's peer). Run here, where pip reaches the registries; then pass ".whl" in the
# device call's carry list: benchmarks/gpu_check.sh installs everything in it.
#
#   bash benchmarks/fetch_wheels.sh        # from anywhere: it cd's to the repository root
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=.whl
mkdir -p "$DEST"
# exact versions: one version of each package (two would stop the offline install)
WHEELS=(
    pint==0.25.3 flexcache==0.3 flexparser==0.4 platformdirs==4.14.8
    spikingjelly==2.0.0 loguru==0.7.3 scienceplots==2.2.2
)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation py --platform any -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
