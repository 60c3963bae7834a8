"""Next-item validation during and after training: HR@K / NDCG@K with constrained top-K retrieval.

Retrieval is `chatrec.retrieval.top_k` (beam search over the item trie, the code serving runs) on
top of a small next-token log-prob function over the in-training model that computes the prompt
once and reuses its KV cache for every beam. `chatrec.recommender.Recommender` wraps a serving
engine and was not there when this was written, so validation drives `top_k` directly with the
same prompt (`chatrec.conversation.prompt_ids` over `chatrec.prompts.next_item_messages`).
Items already in the user's history are excluded, as the recommender does at serving time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatrec.conversation import prompt_ids
from chatrec.metrics import hit_rate, ndcg, target_rank
from chatrec.retrieval import RetrievalConfig, top_k
from chatrec.tokens import find_events, find_sid_spans
from chatrec.trie import ItemTrie


@dataclass
class ValidationResult:
    hr: float
    ndcg: float
    n: int
    k: int
    seconds: float
    recommendations: list[list[str]]

    def metrics(self) -> dict[str, float]:
        return {f"hr@{self.k}": self.hr, f"ndcg@{self.k}": self.ndcg, "n_users": self.n, "seconds": self.seconds}


class CachedLogprobs:
    """`logprobs_fn(prefix, continuations, token_ids) -> [B, T]` over a causal LM with prefix KV reuse."""

    def __init__(self, model: Any):
        self.model = model
        self._key: tuple[int, ...] | None = None
        self._cache: Any = None
        self._last: Any = None  # [V] logits after the prefix

    def __call__(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                 token_ids: Sequence[int]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        key = tuple(int(i) for i in prefix_ids)
        with torch.no_grad():
            if key != self._key:
                out = self.model(input_ids=torch.tensor([key], device=device), use_cache=True, logits_to_keep=1)
                self._key, self._cache, self._last = key, out.past_key_values, out.logits[0, -1].float()
            idx = torch.tensor(list(token_ids), device=device)
            n = len(continuations)
            length = len(continuations[0]) if n else 0
            if length == 0:
                lp = torch.log_softmax(self._last, dim=-1)[idx]  # [T]
                return lp.unsqueeze(0).expand(max(n, 1), -1).cpu().numpy()
            if any(len(c) != length for c in continuations):
                raise ValueError("continuations of one call must have the same length")
            cache = copy.deepcopy(self._cache)
            cache.batch_repeat_interleave(n)
            out = self.model(input_ids=torch.tensor([list(c) for c in continuations], device=device),
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            return torch.log_softmax(out.logits[:, -1].float(), dim=-1)[:, idx].cpu().numpy()  # [B, T]


def history_item_ids(messages: Sequence[dict[str, str]], code_to_item: dict[tuple[int, ...], str]) -> list[str]:
    """Items named by SID in the user turns (the history the prompt shows)."""
    text = "\n".join(m["content"] for m in messages if m["role"] == "user")
    named = [c for _, c in find_events(text)] + [c for _, _, c in find_sid_spans(text)]
    return [code_to_item[c] for c in named if c in code_to_item]


def evaluate_next_item(
    model: Any,
    tokenizer: Any,
    sid_begin_id: int,
    trie: ItemTrie,
    samples: Sequence[dict[str, Any]],
    code_to_item: dict[tuple[int, ...], str],
    *,
    k: int = 10,
    exclude_history: bool = True,
) -> ValidationResult:
    """HR@k and NDCG@k of constrained top-k retrieval over next-item `samples` (JSONL rows)."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    ranks: list[int | None] = []
    recs: list[list[str]] = []
    cfg = RetrievalConfig(k=k)
    item_ids = [str(i) for i in trie.item_ids]
    position = {item: j for j, item in enumerate(item_ids)}
    try:
        for row in samples:
            msgs = [m for m in row["messages"] if m["role"] != "assistant"]
            allowed = None
            if exclude_history:
                allowed = np.ones(len(item_ids), dtype=bool)
                for item in history_item_ids(msgs, code_to_item):
                    if item in position:
                        allowed[position[item]] = False
            ids = prompt_ids(tokenizer, msgs, suffix_ids=[sid_begin_id])
            found = top_k(CachedLogprobs(model), ids, trie, cfg, allowed=allowed)
            rec = [s.item_id for s in found]
            recs.append(rec)
            ranks.append(target_rank(rec, row["target_item_id"]))
    finally:
        model.train(was_training)
    return ValidationResult(hit_rate(ranks, k), ndcg(ranks, k), len(ranks), k, time.perf_counter() - t0, recs)
