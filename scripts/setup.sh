#!/usr/bin/env bash
# One idempotent set-up step: a virtual environment in .venv with torch, lerobot, vlaprune and its
# simulators. Safe to re-run; each step is skipped when already done.
#
#   VLAPRUNE_EXTRAS   pip extras to install (default "dev,sim,libero"; drop "libero" to skip LIBERO and its
#                     350 MB of assets)
#   VLAPRUNE_TORCH    torch requirement when torch is missing (default "torch==2.13.0", the CPU wheel here)
#   VLAPRUNE_VENV     where the environment goes (default .venv)
#
# On Python 3.11 it also runs the compatibility step (scripts/py311_compat.py): lerobot 0.6.1 requires
# Python >= 3.12, so it is installed with --no-deps plus its dependencies, and its 3.12-only syntax and
# the CPU-torch/CUDA-torchvision mismatch are patched. On Python >= 3.12 none of that runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLAPRUNE_VENV:-.venv}
EXTRAS=${VLAPRUNE_EXTRAS:-dev,sim,libero}
TORCH_REQ=${VLAPRUNE_TORCH:-torch==2.13.0}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)

# 1. torch before anything else, so that no dependency pulls a CUDA build.
"$py" -c "import torch" 2>/dev/null || "${pip[@]}" "$TORCH_REQ"

# 2. Python 3.11 compatibility step.
if "$py" -c "import sys; sys.exit(sys.version_info >= (3, 12))"; then
  if ! "$py" -c "import lerobot" 2>/dev/null; then
    "${pip[@]}" -r scripts/lerobot-py311-requirements.txt
    "${pip[@]}" --no-deps --ignore-requires-python "lerobot==0.6.1"
  fi
fi
# Patches only what is broken (torchvision on CPU torch, lerobot's 3.12 syntax on 3.11); no-op otherwise.
"$py" scripts/py311_compat.py

# 3. vlaprune itself (editable) with its extras, and its lerobot policy plugin (lerobot-train / eval /
#    record import every installed `lerobot_policy_*` distribution: pruned checkpoints load there through it).
"${pip[@]}" -e ".[${EXTRAS}]"
"${pip[@]}" --no-deps -e plugins/lerobot_policy_vlaprune

# 4. System packages, when apt is available and we are root: OSMesa/EGL for headless MuJoCo rendering
#    (simulators) and Chromium (the tests render the DTR report in headless Chromium).
if [[ ",$EXTRAS," == *",sim,"* || ",$EXTRAS," == *",libero,"* ]] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  want=()
  ldconfig -p | grep -q libOSMesa || want+=(libosmesa6 libegl1 libgl1-mesa-dri)
  command -v chromium >/dev/null || want+=(chromium)
  if [ ${#want[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null) \
      || echo "setup: could not install ${want[*]} (simulator rendering / report tests may fail)"
  fi
fi
"$py" -c "import vlaprune, lerobot, torch; print(f'setup: vlaprune {vlaprune.__version__}, lerobot {lerobot.__version__}, torch {torch.__version__}')"
