#!/usr/bin/env bash
# The GPU rows of issue 23 in one call on a lent GPU machine (docs/operations.md,
# "Measuring on a GPU machine"): the peer table on CUDA with AMP off and on (1×1 conv
# and U-Net at 67 Mpx), the GPU's busy share over the 1 Gpx U-Net run, and the wall
# time of each stage around the model on CUDA.
#
# Here, first:   python -m bench.gpu_kit          (the wheels the machine lacks → .gpu-kit/)
# There:         bash bench/gpu_check.sh          (the device tool's run, carrying .gpu-kit)
#
# Each bench writes its own section of bench/RESULTS.md ("… on a GPU"); the file and
# each step's log come back under $OUT (bench/out/gpu when it is unset). A step that
# fails or runs past its limit is reported, and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
python=${PYTHON:-python3}
kit=${GPU_KIT:-.gpu-kit}

if ! compgen -G "$kit/*.whl" >/dev/null; then
    echo "gpu_check: no wheels in $kit/: run 'python -m bench.gpu_kit' here first and carry $kit" >&2
    exit 2
fi
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gigaseg-site "$kit"/*.whl || { echo "gpu_check: the kit did not install" >&2; exit 1; }
export PYTHONPATH="$PWD:/tmp/gigaseg-site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" -c "import torch, rasterio, zarr, monai; assert torch.cuda.is_available(), 'torch sees no GPU'" \
    || { echo "gpu_check: the environment is not ready (above)" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

step() {  # step NAME LIMIT_S COMMAND...: run it with its log under $out, then say how it ended
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s (124: past its ${limit} s)"
    tail -n 30 "$out/$name.log"
}

step peer "${PEER_LIMIT_S:-330}" "$python" -m bench.peer_bench --device cuda --amp \
    --sizes 64 --unet-sizes 64,1024 --cli-sizes "" --ray-sizes "" \
    --rows gigaseg,monai-gaussian,monai-user --large-mpx 300 --large-rows gigaseg \
    --ref-max-mpx 0 --timeout 200 --mem-cap 48
step stages "${STAGES_LIMIT_S:-150}" "$python" -m bench.stage_cost_bench --device cuda --mpx 64 --repeats 1
cp bench/RESULTS.md "$out/RESULTS.md"
