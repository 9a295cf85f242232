#!/usr/bin/env bash
# The training-speed measurements on another machine's CPU, side by side, in one go: used on a
# lent GPU machine whose CPU is an AMX Xeon (the class of CPU where bf16 pays most), to fill
# bench/README.md's "Training throughput" and "Where a bf16 training step's time goes" rows.
#
#   bench/other_cpu.sh OUT_DIR [BEFORE_TREE]
#
# Needs in the working tree: .devmodel/SmolLM2-135M-Instruct/ (the default model's folder without
# model.safetensors: config, tokenizer, dpo_studio_model.json; random weights are built here, which
# cost the same time per token as the real ones), optionally .whl/ (wheels the machine lacks), and
# BEFORE_TREE (a `git archive` of an older commit) for a before/after row of the same trainer.
#
# Jobs run at once, each pinned to its own 2 physical cores (OMP_NUM_THREADS=2), so that each
# job's variants, run one after another inside it, are compared side by side:
#   native   train_throughput: ceiling, ours, ceiling-fp32, ours-fp32, trl (as shipped), trl-fast
#   avx2     the same CPU capped to AVX2 kernels (ATen, oneDNN, MKL): a stand-in for a CPU without
#            native bf16; auto measures its bf16 matmul again (its own cache) and should pick fp32
#   profile  profile_step: where a step's time goes, fp32 and bf16, and the pre-change step kinds
#   before   the BEFORE_TREE's trainer and this tree's, ours and ours-fp32, same settings
#   compile  profile_step's bare forward+backward, bf16, eager vs torch.compile (compile time included
#            in its first round)
set -u
OUT=${1:?output folder}
BEFORE=${2:-}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2

if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
    ls .whl/*.whl | grep -v bitsandbytes | xargs $PY -m pip install -q --no-index --no-deps 2>&1 | tail -3
fi
CACHE=$(mktemp -d)
mkdir -p "$CACHE/native/models" "$CACHE/avx2/models"
cp -r .devmodel/SmolLM2-135M-Instruct "$CACHE/native/models/"
$PY - "$CACHE/native/models/SmolLM2-135M-Instruct" <<'EOF'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
folder = sys.argv[1]
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
model.save_pretrained(folder, safe_serialization=True)
print("random weights:", sum(p.numel() for p in model.parameters()), "parameters")
EOF
ln -s "$CACHE/native/models/SmolLM2-135M-Instruct" "$CACHE/avx2/models/SmolLM2-135M-Instruct"

# one vCPU per physical core, in pairs: sets[0] = "a,b", ...
mapfile -t SETS < <($PY - <<'EOF'
import os
seen, firsts = set(), []
for cpu in sorted(os.sched_getaffinity(0)):
    base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
    try:
        key = (open(base + "physical_package_id").read().strip(), open(base + "core_id").read().strip())
    except OSError:
        key = cpu
    if key not in seen:
        seen.add(key)
        firsts.append(cpu)
pairs = [firsts[i:i + 2] for i in range(0, len(firsts) - 1, 2)]
for p in pairs:
    print(",".join(map(str, p)))
EOF
)
echo "core pairs: ${SETS[*]}" | tee "$OUT/machine.txt"
lscpu >> "$OUT/machine.txt" 2>&1
set_of() { echo "${SETS[$(( $1 % ${#SETS[@]} ))]}"; }
LIMIT=${LIMIT:-420}

DPO_STUDIO_CACHE=$CACHE/native taskset -c "$(set_of 0)" timeout "$LIMIT" \
    $PY -m bench.train_throughput --steps ${STEPS:-6} --accum 2 \
    --variants ceiling,ours,ceiling-fp32,ours-fp32,trl,trl-fast > "$OUT/native.txt" 2>&1 &
DPO_STUDIO_CACHE=$CACHE/avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
    taskset -c "$(set_of 1)" timeout "$LIMIT" \
    $PY -m bench.train_throughput --steps ${STEPS:-6} --accum 2 \
    --variants ceiling-fp32,ours,trl-fast > "$OUT/avx2.txt" 2>&1 &
COMPILE=(env DPO_STUDIO_CACHE=$CACHE/native timeout "${COMPILE_LIMIT:-240}" $PY -m bench.profile_step --rounds ${ROUNDS:-3} --profiled ""
         --threads 2 --kinds bare-bf16,bare-bf16-compiled)
(
    DPO_STUDIO_CACHE=$CACHE/native taskset -c "$(set_of 2)" timeout "$LIMIT" \
        $PY -m bench.profile_step --rounds ${ROUNDS:-3} --profile 2 --accum 2 --threads 2 \
        --kinds step-fp32,step-bf16,step-bf16-recast,step-bf16-noshare,bare-fp32,bare-bf16 > "$OUT/profile.txt" 2>&1
    # fewer than 5 pairs of physical cores: the compile job runs after the profile, on its cores
    [ ${#SETS[@]} -lt 5 ] && taskset -c "$(set_of 2)" "${COMPILE[@]}" > "$OUT/compile.txt" 2>&1
) &
(
    if [ -n "$BEFORE" ]; then
        # -P: the BEFORE tree's bench and dpo_engine, not the working folder's
        PYTHONPATH="$BEFORE" DPO_STUDIO_CACHE=$CACHE/native taskset -c "$(set_of 3)" timeout "$LIMIT" \
            $PY -P -m bench.train_throughput --steps ${STEPS:-6} --variants ours,ours-fp32
        DPO_STUDIO_CACHE=$CACHE/native taskset -c "$(set_of 3)" timeout "$LIMIT" \
            $PY -m bench.train_throughput --steps ${STEPS:-6} --variants ours,ours-fp32
    fi
) > "$OUT/before_after.txt" 2>&1 &
[ ${#SETS[@]} -ge 5 ] && taskset -c "$(set_of 4)" "${COMPILE[@]}" > "$OUT/compile.txt" 2>&1 &
wait
cp bench/results/*.jsonl "$OUT/" 2>/dev/null
[ -n "$BEFORE" ] && cp "$BEFORE"/bench/results/train_throughput.jsonl "$OUT/before_train_throughput.jsonl" 2>/dev/null
echo done
