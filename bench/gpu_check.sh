#!/usr/bin/env bash
# The GPU rows of issue 23 in one call on a lent GPU machine (docs/operations.md,
# "Measuring on a GPU machine"): the peer table on CUDA with AMP off and on (1×1 conv
# and U-Net at 67 Mpx), the GPU's busy share over the 1 Gpx U-Net run, the wall time of
# each stage around the model on CUDA, and the 1 Gpx U-Net on Ray with 1 and 4 actors
# sharing the GPU (--workers-per-gpu).
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

# Steps (STEPS picks some, e.g. STEPS="stages feeders" for a second call); limits sum to 480 s.
steps=" ${STEPS:-peer stages feeders} "
if [[ $steps == *" peer "* ]]; then
    step peer "${PEER_LIMIT_S:-240}" "$python" -m bench.peer_bench --device cuda --amp \
        --sizes 64 --unet-sizes 64,1024 --cli-sizes "" --ray-sizes "" \
        --rows gigaseg,monai-gaussian,monai-user --large-mpx 300 --large-rows gigaseg \
        --ref-max-mpx 0 --timeout 150 --mem-cap 48
fi
if [[ $steps == *" stages "* ]]; then
    step stages "${STAGES_LIMIT_S:-80}" "$python" -m bench.stage_cost_bench --device cuda --mpx 64 --repeats 1
fi
# What more CPU processes feeding the one GPU give: the 1 Gpx U-Net on Ray (AMP off), 1 and 4
# actors on the GPU (--workers-per-gpu); printed only (the tables are in the logs), the sections above stay.
if [[ $steps == *" feeders "* ]]; then
    for n in 1 4; do
        step "feeders$n" "${FEEDERS_LIMIT_S:-80}" "$python" -m bench.peer_bench --device cuda \
            --sizes "" --unet-sizes 1024 --cli-sizes "" --ray-sizes 1024 --rows gigaseg-ray \
            --large-mpx 300 --large-rows gigaseg-ray --ref-max-mpx 0 --timeout 75 --mem-cap 96 \
            --workers-per-gpu "$n" --no-record
    done
fi
cp bench/RESULTS.md "$out/RESULTS.md"
