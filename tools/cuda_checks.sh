#!/usr/bin/env bash
# The checks only a CUDA machine can run, as one script, most telling first:
#   1. the `cuda`-marked tests of the multi-GPU speed work: the FFCV and DALI loaders delivering to
#      the GPU while the loop runs ahead of it, fused SGD under the fp16 loss scaler without a host
#      sync, the compiled views;
#   2. the loaders on CUDA (`fastlt bench loader` on native, FFCV and DALI stores);
#   3. the step benchmark of SDCLR and BCL-D in bf16, and BCL-D in fp16 (fused SGD + GradScaler);
#   4. a pretraining under torchrun --max-restarts 1 with --resume-if-exists, its worker killed
#      (SIGKILL) after its first checkpoint: torchrun's restart resumes it to its end;
#   5. the checkpoints' cost per epoch: a checkpoint every epoch against one at the end only;
#   6. end-to-end CIFAR-100-LT pretraining throughput compiled (train.compile on) and with CUDA
#      graphs (train.compile max), the step under max against the CPU's fp32 step;
#   7. the whole `cuda`-marked suite and a linear evaluation on the GPU.
#
#     OUT=results bash tools/cuda_checks.sh          # logs and JSON land in $OUT
#
# It needs torch, torchvision, click, numpy, scikit-learn and pytest (FFCV and DALI where their
# steps should run), and no data set: the runs read stores of random pixels with CIFAR-100's true
# labels (tools/synthetic_store.py; FFCV and DALI copies of it as JPEGs, a worst case for a JPEG
# decoder). Each step has its own time limit, cut to what is left of DEADLINE seconds (what does not
# fit is skipped and said so), and the results are packed into $OUT/cuda-checks.tgz after every
# step, so a stuck step still leaves the others' results. One GPU runs one process, and fastlt forms
# a process group (NCCL) only from two processes on, so step 4 checks the launcher and the restart,
# not NCCL. The max-autotune steps come late: a longer DEADLINE (e.g. 900) reaches them.
# DEVICE=cpu EPOCHS=1 WIDTH=8 runs it small on a CPU (a short DEADLINE checks the flow alone).
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
export work DEVICE EPOCHS WIDTH

step() {  # step NAME SECONDS COMMAND...: run it within its limit and the deadline, log, pack the results
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    ((limit > DEADLINE - SECONDS)) && limit=$((DEADLINE - SECONDS))
    if ((limit < 5)); then
        echo "== $name: skipped, the deadline of $DEADLINE s is reached" | tee -a "$results/summary.txt"
        return
    fi
    timeout -k 10 "$limit" "$@" >"$results/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - started)) s (limit $limit s)" | tee -a "$results/summary.txt"
    tar czf "$OUT/cuda-checks.tgz" -C "$results" .
}

stores() {  # the synthetic CIFAR-100 store, and FFCV and DALI copies of it where those are installed
    python3 tools/synthetic_store.py --variant cifar100 --out "$work/cifar100" || return 1
    python3 - <<'EOF'
import importlib.util, os
from pathlib import Path
from fastlt.data.store import Store, write_native_store
native = Store.open(Path(os.environ["work"]) / "cifar100")
parts = {name: native.part(name) for name in native.parts}
for backend, module in (("ffcv", "ffcv"), ("dali", "nvidia.dali")):
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        print(f"{backend}: not installed, no store")
        continue
    print(write_native_store(Path(os.environ["work"]) / f"cifar100-{backend}", "cifar100", native.class_names, parts,
                             {"dataset": "synthetic noise"}, backend=backend,
                             encode={"image_format": "jpg", "quality": 90, "workers": os.cpu_count()}))
EOF
}
export -f stores

killed_and_resumed() {  # torchrun --max-restarts 1 whose worker is SIGKILLed after the first checkpoint: torchrun
    # starts the same command again, which resumes the run (--resume-if-exists) and finishes it
    local runs=$work/runs-torchrun epochs=$((EPOCHS + 3)) worker
    python3 -m torch.distributed.run --standalone --nproc_per_node 1 --max-restarts 1 -m fastlt pretrain \
        cifar100_lt/simclr --resume-if-exists --device "$DEVICE" --set train.name=killed \
        --set "data.store=$work/cifar100" --set "train.out_dir=$runs" --set "train.epochs=$epochs" \
        --set train.checkpoint_every=1 --set train.checkpoint_minutes=0 --set train.compile=off \
        --set train.compile_views=off --set "model.width=$WIDTH" --set train.progress=false &
    local launcher=$!
    until [[ -f $runs/killed/checkpoints/last.pt ]] || ! kill -0 "$launcher" 2>/dev/null; do sleep 0.1; done
    worker=$(pgrep -P "$launcher")
    [[ -n $worker ]] && kill -KILL $worker &&
        echo "killed the worker after the first checkpoint, $(wc -l <"$runs/killed/metrics.jsonl") epochs done"
    wait "$launcher" || return 1
    python3 - "$runs/killed" "$epochs" <<'EOF'
import json, pathlib, sys
run, epochs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
done = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
resumes = json.loads((run / "run.json").read_text())["resumes"]
print(f"epochs {done}, resumed from epoch {[entry['from_epoch'] for entry in resumes]}")
sys.exit(0 if done == list(range(1, epochs + 1)) and resumes else 1)
EOF
}
export -f killed_and_resumed

pretrain() {  # pretrain NAME RECIPE COMPILE SECONDS [--set KEY=VALUE ...]
    local name=$1 recipe=$2 compile=$3 limit=$4
    shift 4
    step "pretrain-$name" "$limit" python3 -m fastlt pretrain "cifar100_lt/$recipe" --device "$DEVICE" \
        --set "data.store=$work/cifar100" --set "train.out_dir=$work/runs-$name" --set "train.epochs=$EPOCHS" \
        --set "train.compile=$compile" --set "train.compile_views=${compile/max/on}" --set "model.width=$WIDTH" \
        --set train.progress=false "$@"
    cp "$work"/runs-"$name"/*/metrics.jsonl "$results/metrics-$name.jsonl" 2>/dev/null
}

{ nvidia-smi -L 2>/dev/null; python3 -m fastlt info; } >"$results/machine.txt" 2>&1
step stores 90 bash -c stores
step tests-speed 100 python3 -m pytest tests/test_cuda_paths.py $PYTEST_ARGS -q -p no:cacheprovider -rs \
    -k "loop_runs_ahead or fused_sgd_under or compiled_bcl_d_views"
for backend in native ffcv dali; do
    store=$work/cifar100
    [[ $backend != native ]] && store+=-$backend
    [[ -d $store ]] && step "loader-$backend" 30 python3 -m fastlt bench loader --store "$store" --device "$DEVICE" \
        --batch "$BATCH" --batches 40 --out "$results/loader-$backend.json"
done
for case in sdclr:bf16 bcl-d:bf16 bcl-d:fp16; do
    recipe=${case%:*} precision=${case#*:}
    # Eager (train.compile=off, compile_views=off): a cold compile alone would overrun the step's limit.
    step "bench-$recipe-$precision" 40 python3 -m fastlt bench train "cifar100_lt/$recipe" --device "$DEVICE" \
        --batch "$BATCH" --steps 20 --set "train.precision=$precision" --set "model.width=$WIDTH" \
        --set train.compile=off --set train.compile_views=off --no-reference --out "$results/bench-$recipe-$precision.json"
done
step torchrun-killed-resumed 90 bash -c killed_and_resumed
# A checkpoint every epoch against one at the last epoch only (train.checkpoint_minutes' default of 5 minutes
# writes none inside so short a run either): the difference in epoch seconds is the checkpoints' cost.
pretrain checkpoint-every-epoch bcl-d off 45 --set train.checkpoint_every=1 --set train.checkpoint_minutes=0
pretrain checkpoint-at-end bcl-d off 45 --set train.checkpoint_every=0 --set train.checkpoint_minutes=0
pretrain bcl-d-compiled bcl-d on 150
pretrain bcl-d-max bcl-d max 240
step tests-max 150 python3 -m pytest tests/test_cuda_paths.py $PYTEST_ARGS -q -p no:cacheprovider -rs \
    -k "cuda-bf16-channels_last-max"
step tests 200 python3 -m pytest tests $PYTEST_ARGS -q -p no:cacheprovider -rs
pretrain simclr-compiled simclr on 120
run=$(ls -d "$work"/runs-bcl-d-compiled/*/ 2>/dev/null | head -n 1)
[[ -n $run ]] && step linear-eval 60 python3 -m fastlt linear-eval "$run" --device "$DEVICE" --epochs 100 --shots full,100
[[ -n $run ]] && cp -r "$run/eval" "$results/eval" 2>/dev/null

python3 - "$results" <<'EOF' | tee -a "$results/summary.txt"
import json, pathlib, sys
results = pathlib.Path(sys.argv[1])
for path in sorted(results.glob("metrics-*.jsonl")):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    print(path.stem, [(line["epoch"], round(line["images_per_second"]), round(line["epoch_seconds"], 3),
                       round(line["loss"], 3)) for line in lines])
for path in sorted(results.glob("bench-*.json")):
    fastlt = json.loads(path.read_text())["fastlt"]
    print(path.stem, {part: f"{seconds * 1e3:.1f} ms" for part, seconds in fastlt["seconds"].items()},
          f"{fastlt['images_per_s']:.0f} images/s")
for path in sorted(results.glob("loader-*.json")):
    print(path.stem, {name: value["images_per_s"] for name, value in json.loads(path.read_text())["results"].items()})
EOF
tar czf "$OUT/cuda-checks.tgz" -C "$results" .
rm -rf "$work"
