"""Does more training overfit? Held-out vs seen next-item loss of learning-curve snapshots.

For each model folder (e.g. the snapshots of `chatrec finetune --save-minutes` and the final
`trained/`), on every validation user of the bundle: the mean negative log-likelihood, over the
added-token rows, of the code tokens of

- the held-out validation target, after the user's training history and the target's action
  (never trained on), and
- the last event of the training history, after the events before it (trained on every pass).

A growing gap while the held-out loss stops falling means the recipe overfits, and regularisation
is the lever; a held-out loss still falling with the seen one means it is short of compute.

    .venv/bin/python benchmarks/heldout_loss.py --bundle B B/checkpoints/seq-015.0min ... B/trained
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package


def code_nll(model, rows: list[tuple[list[int], int]], first_new: int, batch: int = 32) -> tuple[float, list[float]]:
    """Mean NLL (nats per code token) of the last `n` tokens of each (ids, n), over the added rows;
    and the mean per code level (the last level is the disambiguation level)."""
    import torch

    from finetune.rows_model import right_padded

    levels = max(n for _, n in rows)
    total, count = torch.zeros(levels, dtype=torch.float64), torch.zeros(levels, dtype=torch.float64)
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        ids, attn = right_padded([r for r, _ in chunk], pad=0, device="cpu")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            h = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
            rows_w = model.get_input_embeddings().weight[first_new:]
            for b, (r, n) in enumerate(chunk):
                pos = torch.arange(len(r) - n - 1, len(r) - 1)
                logp = torch.log_softmax((h[b, pos] @ rows_w.T).float(), dim=-1)
                target = torch.tensor(r[len(r) - n:]) - first_new
                total[levels - n:] -= logp[torch.arange(n), target].double()
                count[levels - n:] += 1
    return float(total.sum() / count.sum()), [round(float(t / c), 4) for t, c in zip(total, count, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("models", nargs="+", help="model folders (snapshots, trained/)")
    ap.add_argument("--out", default=None, help="JSON file for the table")
    args = ap.parse_args()
    import pandas as pd

    from chatrec.bundle import Bundle
    from chatrec.prompts import tokens_per_event
    from finetune.data import read_jsonl
    from tokenizer_ext import load_extended

    bundle = Bundle(args.bundle)
    valid = read_jsonl(bundle.train_dir / "sequences_valid.jsonl")
    sids = pd.read_parquet(bundle.require("sids.parquet"), columns=["item_id", "codes"])
    codes_of = {str(i): [int(c) for c in cs] for i, cs in zip(sids["item_id"], sids["codes"], strict=True)}
    results = []
    for folder in args.models:
        t0 = time.perf_counter()
        model, tokenizer, token_map = load_extended(folder)
        model.eval()
        first_new = min(token_map.all_ids())
        per_event = tokens_per_event(token_map.n_levels)
        held, seen = [], []
        for row in valid:
            hist = [int(i) for i in tokenizer(row["text"], add_special_tokens=False)["input_ids"]]
            target = token_map.sid_ids(codes_of[row["target_item_id"]])
            act = token_map.action_id(row["target_action"])
            held.append((hist + [act] + target, len(target)))
            if len(hist) >= 2 * per_event:
                seen.append((hist, per_event - 1))
        (h, h_levels), (s, s_levels) = code_nll(model, held, first_new), code_nll(model, seen, first_new)
        results.append({"model": str(folder), "users": len(held), "heldout_nll": round(h, 4),
                        "seen_nll": round(s, 4), "gap": round(h - s, 4), "heldout_ppl_per_code": round(math.exp(h), 2),
                        "heldout_nll_per_level": h_levels, "seen_nll_per_level": s_levels,
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(results[-1], flush=True)
    print("| model | users | held-out NLL / code | per level | seen NLL / code | gap |\n|---|---|---|---|---|---|")
    for r in results:
        levels = " / ".join(f"{v:.3f}" for v in r["heldout_nll_per_level"])
        print(f"| {Path(r['model']).name} | {r['users']} | {r['heldout_nll']} | {levels} | {r['seen_nll']} | {r['gap']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
