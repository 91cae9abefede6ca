#!/usr/bin/env bash
# The GPU training-efficiency matrix (issue 13), a few minutes on one H100/H200:
#   part 1 (benchmarks/matrices/gpu_eager.yaml):   270M and 450M, seq 2048, bf16, flash vs math, batch 4/8/16
#   part 2 (benchmarks/matrices/gpu_compile.yaml): 270M, seq 2048, bf16, flash vs math, batch 16, torch.compile on
# each fed by the real stream (4 DataLoader workers) over a freshly built sample manifest (scale 4).
# Goal checked (OUT/goal.json): MFU >= 50% for 270M at seq 2048 with no loader stall (< 1% of step time).
#
#   OUT=/path/to/out bash benchmarks/bench_train_matrix_gpu.sh          # from the repository root
#   OUT=/tmp/x DEVICE=cpu SCALE=1 MATRICES=my.yaml bash benchmarks/bench_train_matrix_gpu.sh   # a CPU dry run
#
# Needs torch with CUDA plus this repository's dependencies, and the LLaMA tokenizer: $ELM_DATA_TOKENIZER, or
# shared/tokenizers/llama2/tokenizer.model inside or beside the checkout. Everything is written under $OUT:
# gpu_eager/ and gpu_compile/ (results.csv/json, cells.jsonl as cells finish, plots), goal.json, bench.log.
set -euo pipefail
OUT=${OUT:?set OUT to an output folder}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/.." && pwd)
for candidate in "${ELM_DATA_TOKENIZER:-}" "$here/shared/tokenizers/llama2/tokenizer.model" \
                 "$here/../shared/tokenizers/llama2/tokenizer.model"; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then export ELM_DATA_TOKENIZER=$candidate; break; fi
done
[ -f "${ELM_DATA_TOKENIZER:-}" ] || { echo "no LLaMA tokenizer: set ELM_DATA_TOKENIZER" >&2; exit 2; }
if ! python -c "import elm_data.trainer.bench.efficiency" 2>/dev/null; then
  # not installed here: lay the package out with symlinks (no pip, no network)
  pkg=$(mktemp -d)
  mkdir "$pkg/elm_data"
  for f in "$here"/elm_data/*; do ln -s "$f" "$pkg/elm_data/"; done
  for d in sources pipeline manifests model trainer; do ln -s "$here/$d" "$pkg/elm_data/$d"; done
  export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and
torch.cuda.get_device_name())" | tee "$OUT/torch.txt"
matrices=${MATRICES:-"$here/benchmarks/matrices/gpu_eager.yaml $here/benchmarks/matrices/gpu_compile.yaml"}
args=()
for m in $matrices; do args+=(--matrix "$m"); done
python "$here/benchmarks/bench_train_matrix.py" --device "${DEVICE:-cuda}" --scale "${SCALE:-4}" \
  --work "$(mktemp -d)" "${args[@]}" --out "$OUT" 2>&1 | tee "$OUT/bench.log"
