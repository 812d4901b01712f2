#!/usr/bin/env bash
# The checks only a CUDA machine can run, as one script: the `cuda`-marked tests, the step
# benchmark in fp32 and bf16, and end-to-end CIFAR-100-LT pretraining throughput with and
# without torch.compile, then a linear evaluation on the GPU.
#
#     OUT=results bash tools/cuda_checks.sh          # logs and JSON land in $OUT
#
# It needs torch, torchvision, click, numpy, scikit-learn and pytest, and no data set: the
# throughput runs read a store of random pixels with CIFAR-100's true labels
# (tools/synthetic_store.py). Each step has its own time limit, cut to what is left of
# DEADLINE seconds, and the results are packed into $OUT/cuda-checks.tgz after every step, so a
# stuck step still leaves the others' results. DEVICE=cpu EPOCHS=1 WIDTH=8 runs it small on a CPU.
set -u
OUT=${OUT:?set OUT to a folder for the packed results}
DEADLINE=${DEADLINE:-450}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-3}
WIDTH=${WIDTH:-64}
BATCH=${BATCH:-512}
PYTEST_ARGS=${PYTEST_ARGS:--m cuda}
work=$(mktemp -d)
results=$work/results
mkdir -p "$OUT" "$results"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$work/inductor

step() {  # step NAME SECONDS COMMAND...: run it within its limit and the deadline, log, pack the results
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    ((limit > DEADLINE - SECONDS)) && limit=$((DEADLINE - SECONDS))
    if ((limit < 5)); then
        echo "== $name: skipped, the deadline of $DEADLINE s is reached" | tee -a "$results/summary.txt"
        return
    fi
    timeout "$limit" "$@" >"$results/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - started)) s (limit $limit s)" | tee -a "$results/summary.txt"
    tar czf "$OUT/cuda-checks.tgz" -C "$results" .
}

{ nvidia-smi -L 2>/dev/null; python3 -m fastlt info; } >"$results/machine.txt" 2>&1
step tests 200 python3 -m pytest tests $PYTEST_ARGS -q -p no:cacheprovider -rs
for recipe in simclr bcl-d; do
    for precision in fp32 bf16; do
        # Eager (train.compile=off, compile_views=off): a cold compile alone would overrun the step's limit.
        step "bench-$recipe-$precision" 45 python3 -m fastlt bench train "cifar100_lt/$recipe" --device "$DEVICE" \
            --batch "$BATCH" --set "train.precision=$precision" --set "model.width=$WIDTH" \
            --set train.compile=off --set train.compile_views=off --no-reference --out "$results/bench-$recipe-$precision.json"
    done
done

python3 tools/synthetic_store.py --variant cifar100 --out "$work/cifar100" >/dev/null
pretrain() {  # pretrain NAME RECIPE COMPILE SECONDS
    step "pretrain-$1" "$4" python3 -m fastlt pretrain "cifar100_lt/$2" --device "$DEVICE" \
        --set "data.store=$work/cifar100" --set "train.out_dir=$work/runs-$1" --set "train.epochs=$EPOCHS" \
        --set "train.compile=$3" --set "train.compile_views=$3" --set "model.width=$WIDTH" --set train.progress=false
    cp "$work"/runs-"$1"/*/metrics.jsonl "$results/metrics-$1.jsonl" 2>/dev/null
}
pretrain bcl-d-compiled bcl-d on 150
pretrain bcl-d-eager bcl-d off 60
pretrain simclr-compiled simclr on 120
run=$(ls -d "$work"/runs-bcl-d-compiled/*/ 2>/dev/null | head -n 1)
step linear-eval 60 python3 -m fastlt linear-eval "$run" --device "$DEVICE" --epochs 100 --shots full,100
cp -r "$run/eval" "$results/eval" 2>/dev/null

python3 - "$results" <<'EOF' | tee -a "$results/summary.txt"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("metrics-*.jsonl")):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    print(path.stem, [(line["epoch"], round(line["images_per_second"]), round(line["loss"], 3)) for line in lines])
EOF
tar czf "$OUT/cuda-checks.tgz" -C "$results" .
rm -rf "$work"
