#!/usr/bin/env bash
# The optimum-intel peer's own virtual environment, for benchmarks/cpu_backends.py.
#
#     benchmarks/peer_env.sh VENV_DIR
#
# optimum-intel 2.2.0 pins transformers < 5.6 and huggingface-hub < 1.22, so it cannot live in the dev venv
# next to transformers 5.23; it gets a venv of its own. diffusers 0.42.1 needs huggingface-hub >= 1.32, so
# the peer runs diffusers 0.39.0, the newest that resolves with optimum-intel 2.2.0 (it reads the folders
# 0.42.1 saves; the UNet / VAE / CLIP code is the same for SD 1.5). torch is the CPU build 2.13.0 (the dev venv's):
# a constraints file pins torch==2.13.0+cpu, so no requirement (torchvision's included) can pull a CUDA torch
# from the index. Writes VENV_DIR/.peer-done (the installed versions, `pip freeze`) last, so an interrupted
# setup is redone by the next run. Override the set with PEER_PACKAGES="...".
set -euo pipefail
venv="${1:?usage: peer_env.sh VENV_DIR}"
if [ -f "$venv/.peer-done" ]; then
  exit 0
fi
py="${PEER_PYTHON:-python3}"
rm -rf "$venv"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip >/dev/null
constraints="$venv/constraints.txt"
echo "torch==2.13.0+cpu" > "$constraints"
# torch first: the CPU wheel, from the local wheel folder pip.conf names (find-links)
"${pip[@]}" install -c "$constraints" "torch==2.13.0+cpu"
packages=${PEER_PACKAGES:-"optimum-intel[openvino,diffusers]==2.2.0 diffusers==0.39.0 transformers==5.5.4"}
# shellcheck disable=SC2086
"${pip[@]}" install -c "$constraints" $packages
# torchvision (an optimum-intel requirement) comes from the index built for the CUDA torch: its compiled ops
# fail to register with the CPU torch ("operator torchvision::nms does not exist") and transformers then
# cannot import AutoProcessor, so optimum.intel does not import. Nothing here needs torchvision: remove it.
"${pip[@]}" uninstall -y torchvision
"$venv/bin/python" - <<'EOF'
import torch
assert "+cpu" in torch.__version__ or not torch.version.cuda, f"a CUDA torch was installed: {torch.__version__}"
from optimum.intel import OVStableDiffusionPipeline  # noqa: F401 - fails here, not in the benchmark
EOF
"${pip[@]}" freeze > "$venv/.peer-done"
