"""The vLLM v1 logits processor: span-switching trie constraint, opt-in per request.

A request opts in with `SamplingParams(extra_args={"chatrec": {...}})` (over HTTP with vLLM's own
server, whose `vllm_xargs` values must be flat: `"vllm_xargs": {"chatrec": 1, "chatrec_exclude": [...],
"chatrec_categories": [...]}`); requests without it are untouched. Keys:

    mask        key of a bool item mask registered in this process (`register_mask`), used instead
                of exclude/categories by the in-process engine
    core        key of a `ConstraintCore` registered in this process (`register_core`); without it
                the core is loaded from the served model folder (`trie.npz`, `chatrec_tokens.json`,
                and `../catalog.parquet` for category filters), so `vllm serve ...
                --logits-processors serve.vllm_processor:ChatrecLogitsProcessor` works too
    exclude     item ids that may not be named
    categories  only items with one of these categories

`validate_params` rejects malformed values before the request is scheduled (HTTP 400 in vLLM's
server, `VLLMValidationError` in-process). The masking itself is `chatrec.constrained`, the same
code the transformers engine runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from chatrec.constrained import ConstraintCore, SpanState, mask_logits_
from chatrec.errors import ChatrecError

logger = logging.getLogger(__name__)

EXTRA_KEY = "chatrec"
_KEYS = {"core", "mask", "exclude", "categories"}
_IN_PROCESS = {"core", "mask"}  # keys of objects registered in this process
_ON, _OFF = (1, "1", "on", "true", True), (0, "0", "off", "false", False)

_CORES: dict[str, ConstraintCore] = {}
_MASKS: dict[str, np.ndarray] = {}
_CORES_LOCK = threading.Lock()


def register_mask(key: str, allowed: np.ndarray) -> None:
    """Make a precomputed item mask available as `{"chatrec": {"mask": key}}` (same process)."""
    with _CORES_LOCK:
        _MASKS[key] = allowed


def unregister_mask(key: str) -> None:
    with _CORES_LOCK:
        _MASKS.pop(key, None)


def register_core(key: str, core: ConstraintCore) -> None:
    """Make `core` available to requests that pass `{"chatrec": {"core": key}}` (same process)."""
    with _CORES_LOCK:
        _CORES[key] = core


def unregister_core(key: str) -> None:
    with _CORES_LOCK:
        _CORES.pop(key, None)


def chatrec_args(params: SamplingParams) -> dict[str, Any] | None:
    """The request's chatrec arguments, or None when it did not opt in.

    In process they are `extra_args={"chatrec": {...}}`. vLLM's OpenAI server accepts only flat
    `vllm_xargs` values (strings, numbers, lists), so there a request opts in with
    `"vllm_xargs": {"chatrec": 1, "chatrec_exclude": [...], "chatrec_categories": [...]}`
    (or `"chatrec": "<JSON object>"`). The in-process keys (`core`, `mask`) name objects registered
    in this process and are honoured only in the in-process form (a dict, which vLLM's HTTP server
    never passes): over HTTP they are refused, so no client can point a request at another core
    or at no mask.
    """
    extra = params.extra_args or {}
    value = extra.get(EXTRA_KEY)
    if value is None:
        return None
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str) and value.lstrip().startswith("{"):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"vllm_xargs.{EXTRA_KEY} is not a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError(f"vllm_xargs.{EXTRA_KEY} is not a JSON object")
        local = sorted(set(value) & _IN_PROCESS)
        if local:
            raise ValueError(f"vllm_xargs.{EXTRA_KEY}: {local} are for the in-process engine only; over HTTP "
                             f"send only {sorted(_KEYS - _IN_PROCESS)}")
    elif value in _OFF:
        return None
    elif value in _ON:  # a flag: the flat form
        value = {}
    else:
        raise ValueError(f"vllm_xargs.{EXTRA_KEY} must be 1 (on), 0 (off) or a JSON object, got {str(value)[:64]!r}")
    for key in ("exclude", "categories"):
        flat = extra.get(f"{EXTRA_KEY}_{key}")
        if flat is not None:
            value = {**value, key: flat}
    return value


# the same bounds as chatrec's own server (serve.protocol), kept here so stock vLLM needs no pydantic models
_BOUNDS = {"exclude": (10_000, 256), "categories": (100, 128)}


def _string_list(args: dict[str, Any], key: str) -> None:
    value = args.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"vllm_xargs.{EXTRA_KEY}.{key} must be a list of strings")
    most, chars = _BOUNDS[key]
    if len(value) > most:
        raise ValueError(f"vllm_xargs.{EXTRA_KEY}.{key} has {len(value)} entries; at most {most}")
    if any(not 0 < len(v) <= chars for v in value):
        raise ValueError(f"vllm_xargs.{EXTRA_KEY}.{key}: every entry must be 1 to {chars} characters")


class ChatrecLogitsProcessor(LogitsProcessor):
    """Masks rows of requests that opted in: trie children inside SID spans, no codes outside."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        args = chatrec_args(sampling_params)
        if args is None:
            return
        if not isinstance(args, dict):
            raise ValueError(f"vllm_xargs.{EXTRA_KEY} must be an object, got {args!r}")
        unknown = sorted(set(args) - _KEYS)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in vllm_xargs.{EXTRA_KEY}; allowed: {sorted(_KEYS)}")
        for key, registry in (("core", _CORES), ("mask", _MASKS)):
            value = args.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"vllm_xargs.{EXTRA_KEY}.{key} must be a string, got {value!r}")
            with _CORES_LOCK:
                known = value in registry
            if not known:
                raise ValueError(f"no chatrec {key} registered as {value[:64]!r} in this process")
        _string_list(args, "exclude")
        _string_list(args, "categories")

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.model_dir = Path(vllm_config.model_config.model)
        self.device = device
        self._default_core: ConstraintCore | None = None
        # batch row -> (state, number of prompt tokens, reference to the running output ids)
        self.rows: dict[int, tuple[SpanState, int, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def _core(self, key: str | None) -> ConstraintCore:
        if key is not None:
            with _CORES_LOCK:
                core = _CORES.get(key)
            if core is None:
                raise ValueError(f"no chatrec constraint core registered as {key!r}")
            return core
        if self._default_core is None:
            self._default_core = ConstraintCore.from_model_dir(self.model_dir)
        return self._default_core

    def _new_row(self, params: SamplingParams, prompt_ids: list[int] | None,
                 output_ids: list[int]) -> tuple[SpanState, int, list[int]] | None:
        args = chatrec_args(params)
        if args is None:
            return None
        core = self._core(args.get("core"))
        mask_key = args.get("mask")
        if mask_key is not None:
            with _CORES_LOCK:
                allowed = _MASKS.get(mask_key)
            if allowed is None:  # unregistered since validation: name nothing rather than anything
                raise ValueError(f"no chatrec mask registered as {mask_key!r}")
        else:
            try:
                allowed = core.allowed_items(args.get("exclude") or (), args.get("categories"))
            except (ChatrecError, ValueError) as exc:  # a filter no item passes: this request names none
                logger.warning("chatrec filter refused (%s); the request will name no item", exc)
                allowed = np.zeros(core.trie.n_items, dtype=bool)
        state = core.new_state(prompt_ids or [], allowed)
        return state, len(prompt_ids or []), output_ids

    def _closed_row(self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int],
                    exc: BaseException) -> tuple[SpanState, int, list[int]] | None:
        """The row of a request whose constraint could not be set up: it may name no item (a span
        can only close). An exception in `update_state` would stop vLLM's engine for every request,
        so it never leaves this processor."""
        logger.warning("chatrec constraint refused (%s: %s); the request will name no item",
                       exc.__class__.__name__, exc)
        core = None
        with contextlib.suppress(Exception):
            key = (chatrec_args(params) or {}).get("core")
            with _CORES_LOCK:
                core = _CORES.get(key) if isinstance(key, str) else None
        if core is None:
            try:
                core = self._core(None)
            except Exception:  # noqa: BLE001
                logger.exception("no chatrec constraint core could be loaded from %s; the request runs "
                                 "unconstrained", self.model_dir)
                return None
        state = core.new_state(prompt_ids or [], np.zeros(core.trie.n_items, dtype=bool))
        return state, len(prompt_ids or []), output_ids

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            try:
                row = self._new_row(params, prompt_ids, output_ids)
            except Exception as exc:  # noqa: BLE001  (see _closed_row)
                row = self._closed_row(params, prompt_ids, output_ids, exc)
            if row is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = row
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        states: list[SpanState | None] = [None] * logits.shape[0]
        for index, (state, n_prompt, output_ids) in self.rows.items():
            if index >= len(states):
                continue
            if len(output_ids) + n_prompt > state.n_fed:
                state.feed(output_ids[state.n_fed - n_prompt:])
            states[index] = state
        return mask_logits_(logits, states)
