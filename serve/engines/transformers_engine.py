"""The transformers engine: CPU fallback (and GPU without vLLM) for the engine protocol.

Generation is a small batched decode loop over `past_key_values` so it can stream tokens with
their log-probs; the SID constraint is a transformers `LogitsProcessor` (`SpanLogitsProcessor`)
over `chatrec.constrained`, usable with `model.generate(logits_processor=[...])` as well.
Requests are served one at a time (a lock); vLLM is the engine for concurrent load.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.constrained import ConstraintCore, SpanState, mask_logits_
from chatrec.deps import require
from chatrec.engine import GenerationParams, TokenStep

PREFIX_CACHE_TOKENS = 16_384  # prompt tokens kept in the scoring caches, all prompts together


def _logits_processor_base() -> type:
    from transformers import LogitsProcessor

    return LogitsProcessor


class SpanLogitsProcessor(_logits_processor_base()):  # type: ignore[misc]
    """transformers `LogitsProcessor`: free text outside SID spans, trie continuations inside.

    Row `b`'s state is synced with `input_ids[b]` (prompt + generated so far) on every call, so
    it works with left padding and with `model.generate`.
    """

    def __init__(self, core: ConstraintCore, allowed: np.ndarray | None = None):
        self.core = core
        self.allowed = allowed
        self.states: list[SpanState] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if not self.states:
            self.states = [SpanState(self.core, self.allowed) for _ in range(input_ids.shape[0])]
        fed = min(s.n_fed for s in self.states)
        new = input_ids[:, fed:].tolist()  # only the tokens not seen yet
        for state, row in zip(self.states, new, strict=True):
            state.feed(row[state.n_fed - fed:])
        return mask_logits_(scores, self.states, self.core.banned)


class TransformersEngine:
    """Engine protocol over a HF causal LM folder (float32 on CPU)."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, core: ConstraintCore | None = None, *,
                 device: str | None = None, threads: int | None = None):
        require("transformers", "the transformers engine")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=dtype)
        self.model = model.to(self.device)
        self.model.eval()
        self.core = core
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._lock = threading.Lock()
        self._prefixes: OrderedDict[tuple[int, ...], tuple[Any, Any]] = OrderedDict()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, core: ConstraintCore | None = None) -> TransformersEngine:
        """Wrap an already loaded model (e.g. during finetuning, for validation with `Recommender`)."""
        self = cls.__new__(cls)
        self.model_dir = Path(getattr(getattr(model, "config", None), "name_or_path", "") or ".")
        self.device = str(next(model.parameters()).device)
        self.tokenizer, self.model, self.core = tokenizer, model, core
        self.eos_ids = _eos_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._lock = threading.Lock()
        self._prefixes = OrderedDict()
        return self

    # scoring ---------------------------------------------------------------------------------
    def next_token_logprobs(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                            token_ids: Sequence[int]) -> np.ndarray:
        """Log-probs of `token_ids` after `prefix_ids + c` for every continuation `c` (full-vocabulary softmax)."""
        return self._score(prefix_ids, continuations, token_ids, normalize=True)

    def next_token_scores(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                          token_ids: Sequence[int]) -> np.ndarray:
        """Raw logits of `token_ids` (log-probs up to one constant per row), with the output head
        computed over those rows only. Retrieval renormalises over each beam's trie children, where
        that constant cancels, so it need not pay for the whole vocabulary."""
        return self._score(prefix_ids, continuations, token_ids, normalize=False)

    def _score(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
               token_ids: Sequence[int], *, normalize: bool) -> np.ndarray:
        """The prefix is computed once (batch 1; kept in a small cache for the next call). All
        continuations then run as one flat sequence appended to that cache, with a block-diagonal
        ("tree") attention mask: each continuation sees the prefix and its own earlier tokens. So
        the prefix's KV cache is shared by every beam instead of copied per beam (memory P + B*L
        tokens, not B*(P+L)), and the cache is cropped back to the prefix afterwards.
        """
        import torch

        with self._lock, torch.inference_mode():
            n_prefix, cache, last = self._prefix(prefix_ids)
            cols = torch.as_tensor(list(token_ids), dtype=torch.long, device=self.device)
            out = np.empty((len(continuations), len(token_ids)), dtype=np.float64)
            empty = [b for b, c in enumerate(continuations) if not c]
            if empty:
                out[empty] = self._head(last[None], cols, normalize)[0].cpu().numpy()
            rows = [b for b, c in enumerate(continuations) if c]
            if rows:
                hidden = self._tree_forward(cache, n_prefix, [continuations[b] for b in rows])
                out[rows] = self._head(hidden, cols, normalize).cpu().numpy()
            return out

    def _head(self, hidden: Any, cols: Any, normalize: bool) -> Any:
        """Scores [B, len(cols)] from final hidden states [B, H]: log-softmax over the vocabulary, or
        raw logits of `cols` only (a [len(cols), H] slice of the output matrix)."""
        import torch

        head = self.model.get_output_embeddings()
        if normalize:
            return torch.log_softmax(head(hidden).float(), dim=-1)[:, cols]
        bias = head.bias[cols] if getattr(head, "bias", None) is not None else None
        return torch.nn.functional.linear(hidden, head.weight[cols], bias).float()

    def _base(self) -> Any:
        """The decoder without its output head (final norm included), e.g. `LlamaModel`."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model

    def _tree_forward(self, cache: Any, n_prefix: int, conts: Sequence[Sequence[int]]) -> Any:
        """Final hidden states [B, H] at the last token of each continuation after the cached prefix."""
        import torch

        ids: list[int] = []
        pos: list[int] = []
        last: list[int] = []
        seg: list[int] = []
        for b, c in enumerate(conts):
            ids.extend(int(t) for t in c)
            pos.extend(range(n_prefix, n_prefix + len(c)))
            seg.extend([b] * len(c))
            last.append(len(ids) - 1)
        n = len(ids)
        seg_t = torch.as_tensor(seg, device=self.device)
        idx = torch.arange(n, device=self.device)
        own = (seg_t[:, None] == seg_t[None, :]) & (idx[None, :] <= idx[:, None])  # same beam, causal
        visible = torch.cat([torch.ones(n, n_prefix, dtype=torch.bool, device=self.device), own], dim=1)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(1, 1, n, n_prefix + n, dtype=dtype, device=self.device)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)  # additive: works with sdpa and eager attention
        try:
            hidden = self._base()(input_ids=torch.as_tensor([ids], device=self.device),
                                  position_ids=torch.as_tensor([pos], device=self.device),
                                  attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state[0]
        finally:
            cache.crop(-n)  # drop the continuations: back to the prefix alone, for the next level
        return hidden[torch.as_tensor(last, device=self.device)]

    def _prefix(self, prefix_ids: Sequence[int]) -> tuple[int, Any, Any]:
        """(length, KV cache, last hidden state) of `prefix_ids`.

        Caches are kept per prompt in a small LRU (`PREFIX_CACHE_TOKENS` in all): a repeated
        request for the same history reuses its prompt, and a prompt that extends a cached one (a
        chat's next turn) computes only its new tail on top of it.
        """
        import torch

        key = tuple(int(t) for t in prefix_ids)
        if not key:
            raise ValueError("next_token_logprobs needs a non-empty prefix")
        hit = self._prefixes.get(key)
        if hit is not None:
            self._prefixes.move_to_end(key)
            return len(key), hit[0], hit[1]
        base = max((k for k in self._prefixes if len(k) < len(key) and key[: len(k)] == k), key=len, default=None)
        cache = self._prefixes.pop(base)[0] if base is not None else None
        tail = key[len(base):] if base is not None else key
        out = self._base()(input_ids=torch.as_tensor([tail], device=self.device), past_key_values=cache,
                           use_cache=True)
        entry = (out.past_key_values, out.last_hidden_state[0, -1])
        self._remember(key, entry)
        return len(key), entry[0], entry[1]

    def _remember(self, key: tuple[int, ...], entry: tuple[Any, Any]) -> None:
        """Keep a prompt's (KV cache, last hidden state), evicting the oldest past the token budget."""
        self._prefixes[key] = entry
        while len(self._prefixes) > 1 and sum(len(k) for k in self._prefixes) > PREFIX_CACHE_TOKENS:
            self._prefixes.popitem(last=False)

    # generation ------------------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], params: GenerationParams) -> Iterator[TokenStep]:
        """One prompt (a chat turn), decoded on its cached prompt: a chat's next turn, whose prompt
        extends the last one, computes only its new tokens (`_prefix`); the cache is cropped back to
        the prompt afterwards, also when the caller stops reading.

        The engine lock is held for each step's compute only, never across a `yield`: a client that
        stops reading a stream must not stop every other request. While it runs, this generation
        owns its prompt's cache (taken out of the LRU, put back at the end), so the requests that
        run between its steps never see it half-extended. A server resumes this generator on
        whichever thread is free, and inference mode is per thread, so each step enters it anew.
        """
        import torch

        processor, gen, stops = self._decoding(params)
        key = tuple(int(t) for t in prompt_ids)
        with self._lock, torch.inference_mode():
            n, cache, last = self._prefix(prompt_ids)
            self._prefixes.pop(key, None)  # owned by this generation until it ends
        seqs = torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        head = self.model.get_output_embeddings()
        hidden = last[None]  # [1, H]
        try:
            for i in range(params.max_tokens):
                with self._lock, torch.inference_mode():
                    logits = head(hidden).float()  # [1, V]
                    raw = torch.log_softmax(logits, dim=-1)
                    if processor is not None:
                        logits = processor(seqs, logits)
                    nxt = _sample(logits, params, gen)  # [1]
                    tok = int(nxt[0])
                    step = TokenStep(tok, float(raw[0, tok]))
                yield step
                if tok in stops or i + 1 == params.max_tokens:
                    return
                with self._lock, torch.inference_mode():
                    seqs = torch.cat([seqs, nxt[:, None]], dim=1)
                    out = self._base()(input_ids=nxt[:, None], past_key_values=cache, use_cache=True,
                                       position_ids=torch.as_tensor([[n + i]], device=self.device))
                    hidden = out.last_hidden_state[:, -1]
        finally:
            with self._lock, torch.inference_mode():
                cache.crop(n)  # back to the prompt alone, as the LRU keeps it
                if key not in self._prefixes:
                    self._remember(key, (cache, last))

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: GenerationParams) -> list[list[int]]:
        outs: list[list[int]] = [[] for _ in prompts]
        with self._lock:
            for step in self._decode([list(p) for p in prompts], params):
                for b, tok in enumerate(step):
                    if tok is not None:
                        outs[b].append(tok.token_id)
        return outs

    def _decoding(self, params: GenerationParams) -> tuple[SpanLogitsProcessor | None, Any, set[int]]:
        """(span processor or None, seeded generator, stop ids) of one generation request."""
        import torch

        if params.constrained and self.core is None:
            raise ValueError("constrained generation needs a ConstraintCore")
        gen = torch.Generator(device=self.device)
        if params.seed is not None:
            gen.manual_seed(int(params.seed))
        else:
            gen.seed()
        stops = set(params.stop_token_ids) if params.ignore_eos else set(self.eos_ids) | set(params.stop_token_ids)
        processor = SpanLogitsProcessor(self.core, params.allowed_items) if params.constrained else None  # type: ignore[arg-type]
        return processor, gen, stops

    def _decode(self, prompts: list[list[int]], params: GenerationParams) -> Iterator[list[TokenStep | None]]:
        """Batched left-padded decode loop; yields each step's token per row (None once finished)."""
        import torch

        processor, gen, stops = self._decoding(params)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.as_tensor(p)
            mask[b, width - len(p):] = 1
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        seqs = ids
        past = None
        step_ids = ids
        with torch.inference_mode():
            for _ in range(params.max_tokens):
                pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=pos,
                                 past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                logits = out.logits[:, -1].float()                                  # [B, V]
                raw = torch.log_softmax(logits, dim=-1)
                if processor is not None:
                    logits = processor(seqs, logits)
                nxt = _sample(logits, params, gen)                                  # [B]
                lp = raw.gather(1, nxt[:, None])[:, 0]
                row: list[TokenStep | None] = []
                for b in range(len(prompts)):
                    row.append(None if done[b] else TokenStep(int(nxt[b]), float(lp[b])))
                newly = torch.tensor([int(t) in stops for t in nxt.tolist()], device=self.device)
                done = done | newly
                yield row
                if bool(done.all()):
                    return
                nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
                step_ids = nxt[:, None]
                seqs = torch.cat([seqs, step_ids], dim=1)
                mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            yield [None] * len(prompts)

    def close(self) -> None:
        self._prefixes.clear()
        self.model = None


def _sample(logits: Any, params: GenerationParams, gen: Any) -> Any:
    import torch

    if params.temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / params.temperature
    if params.top_p < 1:
        probs = torch.softmax(scaled, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cut = sorted_p.cumsum(-1) - sorted_p > params.top_p
        drop = torch.zeros_like(cut).scatter(1, order, cut)
        scaled = scaled.masked_fill(drop, float("-inf"))
    # inverse-CDF sampling: one uniform per row (cheaper than multinomial on a large vocabulary)
    cdf = torch.softmax(scaled, dim=-1).cumsum_(dim=-1)                          # [B, V]
    u = torch.rand((scaled.shape[0], 1), generator=gen, device=scaled.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u)[:, 0].clamp_(max=scaled.shape[-1] - 1)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    return sorted(set(ids)) or [0]
