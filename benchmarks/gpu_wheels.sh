#!/usr/bin/env bash
# Download, here (where pip reaches PyPI), the wheels benchmarks/gpu_paper.sh needs on a GPU
# machine that has Python 3.12, torch and transformers 5.x but no network, no diffusers and no
# pydantic: namd's own imports on the benchmark's path that such a machine may lack, each
# without its dependencies (--no-deps; the list is the closure), as binary wheels for CPython
# 3.12 on manylinux x86_64. gpu_paper.sh unpacks only those whose module the machine lacks.
#
#   benchmarks/gpu_wheels.sh                    # -> .gpu-wheels/ (git-ignored), cp312
#   benchmarks/gpu_wheels.sh 3.11 DIR           # the same set for another Python (dry runs here)
#
# Versions: those this repository is tested with (its .venv); PIN_<NAME>=x.y overrides one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pyver=${1:-3.12}
out=${2:-$root/.gpu-wheels}
abi=cp${pyver/./}
pip=${PIP:-$root/.venv/bin/pip}
limit_mb=64

# distribution==version: namd's imports on the benchmark's path and their dependencies that a
# torch + transformers 5 machine does not bring (transformers already needs numpy, pyyaml, tqdm,
# safetensors, regex, packaging, filelock, huggingface_hub, tokenizers).
packages=(
  diffusers==0.42.1 importlib_metadata==9.1.0 zipp==3.23.0 pillow==12.3.0
  requests==2.34.2 urllib3==2.6.3 idna==3.11 charset_normalizer==3.4.4 certifi==2026.1.4
  pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.7.0 typing_inspection==0.4.4
  typing_extensions==4.16.0
  pandas==3.1.1 python_dateutil==4.0.0 tzdata==2026.6
  accelerate==1.15.0 psutil==7.2.2
)
# take the version installed here when the .venv has the package (the tested one)
specs=()
for spec in "${packages[@]}"; do
  name=${spec%%==*}
  override_var="PIN_$(echo "$name" | tr '[:lower:]-' '[:upper:]_')"
  installed=$("$pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  version=${!override_var:-${installed:-${spec##*==}}}
  specs+=("$name==$version")
done

mkdir -p "$out"
"$pip" download --no-deps --only-binary=:all: --dest "$out" \
  --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  "${specs[@]}"

total=$(du -cb "$out"/*.whl | tail -1 | cut -f1)
ls -l "$out"/*.whl | awk '{printf "%8.2f MB  %s\n", $5 / 1e6, $9}'
printf 'total %.1f MB in %s (limit %d MB)\n' "$(echo "$total / 1000000" | bc -l)" "$out" "$limit_mb"
if [ "$total" -gt $((limit_mb * 1000000)) ]; then
  echo "error: the wheels exceed $limit_mb MB" >&2
  exit 1
fi
