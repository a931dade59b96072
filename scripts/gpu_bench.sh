#!/usr/bin/env bash
# The prepared GPU benchmark behind docs/benchmarks.md: keel vs pre_ln at the paper's width
# (d_model 1024, FFN 3072, 16 heads, 8 KV heads), seq 4096 x batch 1, bf16-mixed, depths in
# SUB-LAYERS, 10 timed steps per point after 2 untimed. One call of at most 8 minutes on one
# H100/H200; every stage has its own time limit and writes its own JSON, so a stage that fails
# or runs out of time costs only itself:
#   eager    64,128,256: MFU, Keel/Pre-LN, Lightning/bare (fused AdamW, fp32 stream)
#   compile  64,256 keel and pre_ln, per-block torch.compile: compile time (first step minus a
#            compiled step) and compiled step time, bare loop
#   ckpt     64,1024 with activation checkpointing: peak memory (and MFU), bare loop (64 first:
#            the untimed warm-up step runs without checkpointing)
#
#   OUT=results/ bash scripts/gpu_bench.sh               # on the GPU machine (repo root)
#   GPU_BENCH_SMOKE=1 OUT=/tmp/gb bash scripts/gpu_bench.sh   # tiny CPU rehearsal
#
# Needs torch, lightning, typer, rich, pyyaml, matplotlib, pydantic; wheels found in .whl/
# (e.g. pydantic for the machine's Python) are installed to /tmp/site first.
# Writes $OUT/log.txt, $OUT/rows.jsonl (one line per finished configuration, all stages),
# $OUT/<stage>.json (keelctl bench's JSON). Plots are made afterwards from the JSON.
set -u
OUT=${OUT:?set OUT to a directory for the results}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

if [ "${GPU_BENCH_SMOKE:-0}" = 1 ]; then  # the same stages at toy sizes on CPU
    DEVICE=cpu SHAPE='"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 192, "seq_len": 32'
    DEPTHS=(4,8 4 4,16) STEPS='"steps": 2, "warmup": 1' LIMITS=(400 500 300)
else
    DEVICE=cuda SHAPE='"d_model": 1024, "n_heads": 16, "n_kv_heads": 8, "ffn_hidden": 3072, "seq_len": 4096'
    DEPTHS=(64,128,256 64,256 64,1024) STEPS='"steps": 10, "warmup": 2' LIMITS=(150 130 120)
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

echo "== machine"; date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
$PY - <<'EOF'
import platform, time, torch, lightning, pydantic
print("python", platform.python_version(), "torch", torch.__version__, "lightning",
      lightning.__version__, "pydantic", pydantic.__version__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    print(f"bf16 8192^3 matmul: {20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s")
EOF

# stage NAME LIMIT_S OPTIONS_JSON: one keelctl bench run (bare loop, and Lightning if asked).
stage() {
    echo "== stage $1 (limit $2 s): $3"; date -u
    timeout --kill-after=10 "$2" $PY - "$1" "$3" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from rich.console import Console
from keelctl.bench import BenchOptions, run_bench
from keelctl.bench.report import bench_table
from keelctl.runs import atomic_write_json

name, options, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])

def on_row(row):
    with open(out / "rows.jsonl", "a") as f:
        f.write(json.dumps({"stage": name, **row}) + "\n")
    bare = row["bare"] or {}
    print(name, row["scheme"], row["depth_sublayers"], row["error"] or "",
          f"{bare.get('step_time_s', 0) * 1e3:.1f} ms", f"{bare.get('tokens_per_s', 0):.0f} tok/s",
          f"{(bare.get('peak_mem_bytes') or 0) / 2**30:.1f} GiB", flush=True)

doc = run_bench(BenchOptions(**options), on_row=on_row)
atomic_write_json(out / f"{name}.json", doc)
Console(width=160).print(bench_table(doc))
EOF
    echo "== stage $1 exit $?"
}

COMMON="\"device\": \"$DEVICE\", \"precision\": \"bf16-mixed\", \"schemes\": [\"keel\", \"pre_ln\"], $SHAPE, \"batch_size\": 1, $STEPS"
stage eager "${LIMITS[0]}" "{$COMMON, \"depths\": [${DEPTHS[0]}]}"
stage compile "${LIMITS[1]}" "{$COMMON, \"depths\": [${DEPTHS[1]}], \"compile\": true, \"lightning\": false}"
stage ckpt "${LIMITS[2]}" "{$COMMON, \"depths\": [${DEPTHS[2]}], \"activation_checkpointing\": true, \"lightning\": false}"
echo "== done"; date -u; nvidia-smi --query-gpu=name,memory.used,temperature.gpu,clocks.sm --format=csv 2>/dev/null
