#!/usr/bin/env bash
# The paper-size benchmark on a CUDA machine (issue 15, part 3), in under five minutes: one
# training step of the VAE, the prior and the cond stage (soft prompts through a Gemma-3-shaped
# language model at D = 2560) in fp32 and in bf16, one DDIM step at batch 8 in both, then
# K = 20 x 50-step DDIM sampling of 450 nodules (the paper's test set) plus the VAE decode,
# each peak beside namd.sizing's estimate: benchmarks/results/paper_size_gpu.{md,json}, beside
# the CPU run's benchmarks/results/paper_size.md.
#
#   benchmarks/gpu_wheels.sh                 # once, where PyPI is reachable: .gpu-wheels/
#   benchmarks/gpu_paper.sh                  # on the GPU machine (no network needed)
#   benchmarks/gpu_paper.sh --device cpu     # dry run on a CPU: reduced batches and sampling
#
# The GPU machine has Python 3.12, torch and transformers 5.x but neither diffusers nor pydantic
# and no network: namd runs from src/ on PYTHONPATH (no install), and every wheel of
# .gpu-wheels/ (WHEELS=DIR for another folder) whose distribution is missing there, or older
# than the wheel, is unpacked into a temporary folder put before site-packages (a wheel is a zip
# file; compiled ones such as pydantic-core load from an unpacked folder). PYTHON picks the
# interpreter (default python3); extra arguments go to benchmarks/paper_size.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
wheels=${WHEELS:-$root/.gpu-wheels}
device=cuda
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$py" - "$wheels" "$site" <<'EOF'
import sys, zipfile
from importlib import metadata
from pathlib import Path

def older(installed: str, wanted: str) -> bool:
    try:
        from packaging.version import Version
        return Version(installed) < Version(wanted)
    except Exception:  # no packaging, or an odd version: keep what the machine has
        return False

wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
for whl in sorted(wheels.glob("*.whl")):
    dist, version = whl.name.split("-")[:2]
    try:
        have = metadata.version(dist)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or older(have, version):
        zipfile.ZipFile(whl).extractall(site)
        print(f"[gpu_paper] {dist} {version} from {whl.name}" + (f" (the machine has {have})" if have else ""))
    else:
        print(f"[gpu_paper] {dist} {have} of the machine kept (wheel {version})")
EOF
else
  echo "[gpu_paper] no wheels in $wheels (run benchmarks/gpu_wheels.sh where PyPI is reachable)" >&2
fi
export PYTHONPATH="$root/src:$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import namd.sizing, namd.training.diffusion, namd.training.vae, namd.inference.sampler, diffusers, pydantic, transformers, torch; print('[gpu_paper] python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'pydantic', pydantic.__version__, 'cuda', torch.cuda.is_available())"

cd "$root"
if [ "$device" = cuda ]; then
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --device cpu for a dry run')"
  # fp32 and bf16 steps, then sampling in bf16 (450 x 20 x 50 = 450,000 U-Net evaluations, 4.9
  # PFLOP: several minutes in fp32 without TF32 on one GPU; --sample-precision fp32 to time that)
  exec timeout "${TIMEOUT:-295}" "$py" benchmarks/paper_size.py --device cuda --precisions fp32,bf16 \
    --stages vae,prior,cond,ddim,sample --sample-nodules 450 --sample-k 20 --sample-steps 50 \
    --ddim-steps 10 --out benchmarks/results/paper_size_gpu "${args[@]}"
else
  exec "$py" benchmarks/paper_size.py --device "$device" --precisions fp32,bf16 \
    --stages vae,prior,cond,ddim,sample --batch vae=4 --batch prior=2 --batch cond=2 \
    --sample-nodules 2 --sample-k 2 --sample-steps 2 --ddim-steps 1 \
    --label "Dry run of benchmarks/gpu_paper.sh on a CPU: the paper's networks, but batches vae 4, prior 2, cond 2 and sampling 2 nodules x K=2 x 2 steps (the GPU run: the preset's batches, 450 x 20 x 50). Not GPU numbers." \
    --out benchmarks/results/paper_size_gpu_dryrun "${args[@]}"
fi
