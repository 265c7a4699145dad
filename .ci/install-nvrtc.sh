#!/usr/bin/env bash
# Installs NVRTC (CUDA 13.0, from PyPI) so that CI can compile every CUDA kernel without a GPU or a CUDA toolkit.
# Prints the folder holding libnvrtc.so.13 on its last line; the kernel-compile test needs that folder on
# LD_LIBRARY_PATH (dlopen reads it at process start), e.g.
#   export LD_LIBRARY_PATH="$(.ci/install-nvrtc.sh | tail -n1)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set -euo pipefail
cd "$(dirname "$0")/.."
# Pinned to CUDA 13.0, the version cudarc is built against (feature cuda-13000).
version="13.0.88"
dest=".angle-cache/nvrtc/${version}"
lib="${dest}/nvidia/cu13/lib"
if [ ! -f "${lib}/libnvrtc.so.13" ]; then
  python3 -m pip install --quiet --no-deps --disable-pip-version-check --target "${dest}" \
    "nvidia-cuda-nvrtc==${version}" >&2
fi
if [ ! -f "${lib}/libnvrtc.so.13" ]; then
  echo "install-nvrtc: ${lib}/libnvrtc.so.13 missing after install" >&2
  exit 1
fi
echo "$(pwd)/${lib}"
