"""A design measurement, not the served recipe: one input position per event, one softmax over items.

The sequence recipe spells every event as 4 tokens (`ACTION s0 s1 s2`) and predicts each next token,
so a pass over ML-1M costs 4 trunk positions an event; on the 2 CPU cores 150 minutes buy about 11
passes where SASRec makes 33 (BENCHMARKS.md, "Where the ML-1M gap comes from"). This script trains
the same SmolLM2 trunk (the bundle's extended model, its bottom `--layers` layers) with each event
as ONE position, the sum of its action and SID code rows (halved, to keep the rows' scale), and
scores the next item with a full softmax over the catalog, an item's output vector being the sum of
its code rows (tied to the input rows) plus a residual of its own that starts at zero; the next
event's action shifts the last hidden state (a learned vector per action), so at scoring time the
model is asked for the next item the user will *like*, as the served prompt asks with `<|act_like|>`.
Each pass then costs a quarter of the trunk positions, and the loss is SASRec's (full-catalog
cross-entropy). Everything else is the recipe's: AdamW, the learning rates of `chatrec finetune`
(5e-4 layers, 5e-3 added rows), its warm-up and cosine over the wall-clock budget, bf16 autocast,
and its length-grouped batches (`window_order`: users' windows run from 2 to `--max-len` events).

It is scored on the same split, the same seeded validation users and the same NDCG@10 as
`score_gains.py score --cases valid`, and writes its file in that shape, so `score_gains.py report
--against` pairs it with a run of the served recipe. Evaluation time is not counted in the budget.

    python benchmarks/compact_events.py --bundle B --layers 2 --max-minutes 60 --save-minutes 20,40 \\
        --max-users 3000 --out benchmarks/results/ml1m_compact_events_valid.json

Its numbers chose to build it: `chatrec finetune --reading events` (finetune/events.py) trains this model
and serves it (one token per (action, item)); this script stays as the measurement that chose it, and no
test number is reported from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

K = 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-minutes", type=float, required=True)
    p.add_argument("--save-minutes", default="", help="Training minutes at which to score validation too.")
    p.add_argument("--max-len", type=int, default=200, help="Events a window holds (SASRec's 200 on ML-1M).")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rows-lr", type=float, default=5e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--dropout", type=float, default=0.0, help="Dropout on the event embeddings and the last hidden "
                   "states while training (the recipe's `dropout`; SASRec's default is 0.2).")
    p.add_argument("--no-residual", action="store_true", help="Items' output vectors are their code rows' sum alone.")
    p.add_argument("--max-users", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from chatrec import metrics
    from chatrec.bundle import Bundle
    from chatrec.evaluation import Catalog, sample_cases, split_for, target_ranks
    from finetune.events import padded, user_sequences, windows
    from finetune.sequence import SequenceConfig, cpu_has_bf16, lr_factor, recipe_model, window_order

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    bundle = Bundle(args.bundle)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    inter = pd.read_parquet(bundle.interactions_path)
    split = split_for(inter, catalog, "liked", ["llm-compact"], log=lambda m: print(m, file=sys.stderr))
    sids = pd.read_parquet(bundle.root / "sids.parquet")
    codes_of = dict(zip(sids["item_id"].astype(str), sids["codes"], strict=True))
    rm, _peft, _tok, token_map = recipe_model(bundle.require("model"), SequenceConfig(keep_layers=args.layers))
    model, first = rm.model, rm.first
    action_names = sorted(inter["action"].astype(str).unique())
    actions = {a: i for i, a in enumerate(action_names)}
    action_rows = torch.tensor([token_map.action_id(a) - first for a in action_names])
    code_rows = torch.tensor([[token_map.code_id(level, int(c)) - first for level, c in enumerate(codes_of[i])]
                              for i in catalog.ids])  # [I, levels]
    n_items, hidden = len(catalog), model.config.hidden_size
    residual = torch.nn.Parameter(torch.zeros(n_items, hidden), requires_grad=not args.no_residual)
    shift = torch.nn.Parameter(torch.zeros(len(action_names), hidden))
    opt = torch.optim.AdamW([{"params": rm.trunk, "lr": args.lr},
                             {"params": [p for p in (rm.new_rows, residual, shift) if p.requires_grad], "lr": args.rows_lr}], weight_decay=0.0)
    peaks = [g["lr"] for g in opt.param_groups]
    bf16 = cpu_has_bf16()

    def event_embeddings(items: Any, acts: Any) -> Any:  # [B, T] -> [B, T, H]
        rows = rm.new_rows
        return (rows[code_rows[items]].sum(-2) + rows[action_rows[acts]]) / 2

    def item_matrix() -> Any:  # [I, H]
        return rm.new_rows[code_rows].sum(-2) + residual

    def hidden_states(items: Any, acts: Any, mask: Any) -> Any:
        training = rm.model.training and args.dropout > 0
        x = F.dropout(event_embeddings(items, acts), args.dropout, training)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = rm.model.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return F.dropout(h, args.dropout, training)

    seqs = user_sequences(split.train, catalog.index, actions)
    wins = windows(seqs, args.max_len)
    targets_per_pass = sum(len(w[0]) - 1 for w in wins)
    cases = sample_cases(split.valid, args.max_users, args.seed)
    print(f"{len(seqs):,} users, {len(wins):,} windows, {targets_per_pass:,} targets a pass; "
          f"{len(cases):,} validation users; bf16 {bf16}", file=sys.stderr)

    @torch.no_grad()
    def evaluate() -> tuple[float, list[float], float]:
        rm.model.eval()
        t0 = time.perf_counter()
        like = actions["like"]
        mat = item_matrix()
        gains: list[float] = []
        for s in range(0, len(cases), 64):
            chunk = cases[s:s + 64]
            rows = [(np.array([catalog.index[i] for i in c.items[-args.max_len:]]),
                     np.array([actions[a] for a in c.actions[-args.max_len:]])) for c in chunk]
            items, acts, mask = padded(rows)
            h = hidden_states(items, acts, mask).float()
            last = h[torch.arange(len(rows)), mask.sum(1) - 1] + shift[like]
            scores = (last @ mat.T).numpy()
            recs = []
            for row, c in zip(scores, chunk, strict=True):
                row[[catalog.index[i] for i in c.items]] = -np.inf
                top = np.argpartition(-row, K)[:K]
                recs.append([catalog.ids[i] for i in top[np.argsort(-row[top])]])
            gains.extend(metrics.ndcg_gains(target_ranks(recs, chunk, K), K).tolist())
        rm.model.train()
        return float(np.mean(gains)), gains, time.perf_counter() - t0

    saves = sorted(float(m) for m in args.save_minutes.split(",") if m)
    budget = args.max_minutes * 60
    out_path = Path(args.out)
    report: dict[str, Any] = {"seed": args.seed, "bundle": str(bundle.root), "protocol": "liked",
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                              "recipe": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}
    stream = window_order(len(wins), args.seed, [len(w[0]) for w in wins], args.batch_size)  # length-grouped
    step, trained_s, done_targets, losses = 0, 0.0, 0, []
    rm.model.train()
    bar = tqdm(total=int(budget), unit="s", desc="compact events", file=sys.stderr)
    while True:
        t0 = time.perf_counter()
        items, acts, mask = padded([wins[next(stream)] for _ in range(args.batch_size)])
        for g, peak in zip(opt.param_groups, peaks, strict=True):
            g["lr"] = peak * lr_factor(trained_s / budget, step, args.warmup_steps)
        h = hidden_states(items, acts, mask)
        keep = (mask[:, 1:] > 0)
        pred = (h[:, :-1][keep].float() + shift[acts[:, 1:][keep]])
        target = items[:, 1:][keep]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = pred @ item_matrix().T
        loss = F.cross_entropy(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        done_targets += int(keep.sum())
        losses.append(float(loss))
        dt = time.perf_counter() - t0
        trained_s += dt
        bar.update(int(trained_s) - bar.n)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", passes=f"{done_targets / targets_per_pass:.2f}")
        final = trained_s >= budget
        if (saves and trained_s >= saves[0] * 60) or final:
            while saves and trained_s >= saves[0] * 60:
                saves.pop(0)
            ndcg, gains, eval_s = evaluate()
            run = {"cases": "valid", "model": "final" if final else f"compact-{trained_s / 60:.1f}min",
                   "users": len(cases), "user_ids": [c.user_id for c in cases],
                   "train_minutes": round(trained_s / 60, 2), "steps": step,
                   "passes": round(done_targets / targets_per_pass, 2),
                   "events_per_s": round(done_targets / trained_s),
                   "loss_last_200": round(float(np.mean(losses[-200:])), 4),
                   "systems": {"llm-compact": {"ndcg@10": ndcg, "eval_s": round(eval_s, 1),
                                               "gains": [round(g, 5) for g in gains]}}}
            report["runs"].append(run)
            out_path.write_text(json.dumps(report) + "\n")
            tqdm.write(f"{trained_s / 60:.1f} min, step {step}, {run['passes']} passes, loss {run['loss_last_200']}: "
                       f"validation NDCG@10 {ndcg:.4f} ({len(cases)} users, {eval_s:.0f} s)", file=sys.stderr)
        if final:
            break
    bar.close()
    if not math.isfinite(losses[-1]):
        raise SystemExit("the loss diverged")


if __name__ == "__main__":
    main()
