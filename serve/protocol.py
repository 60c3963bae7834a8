"""Pydantic models at the HTTP boundary (OpenAI chat shapes plus chatrec's extra fields)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

_ACTION = re.compile(r"^[a-z0-9_]+$")


def _check_action(v: str) -> str:
    if not _ACTION.match(v):
        raise ValueError(f"action must be lower-case letters, digits and '_', got {v!r}")
    return v


Action = Annotated[str, AfterValidator(_check_action)]  # one rule for history and feedback actions
# fixed per-field bounds (the per-request cost bounds are `chatrec serve` settings)
MAX_ID_CHARS, MAX_IDS, MAX_CATEGORY_CHARS, MAX_CATEGORIES = 256, 10_000, 128, 100
ItemId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Category = Annotated[str, Field(min_length=1, max_length=MAX_CATEGORY_CHARS)]


class HistoryItem(BaseModel):
    """One past interaction: an item id and the user's action on it."""

    item_id: str = Field(min_length=1, max_length=256)
    action: Action = Field(default="watch", max_length=64)


class ChatrecOptions(BaseModel):
    """chatrec's extra request body field (`extra_body={"chatrec": {...}}` with the openai client)."""

    model_config = ConfigDict(extra="forbid")

    history: list[HistoryItem] = Field(default_factory=list, max_length=500)
    exclude_item_ids: list[ItemId] = Field(default_factory=list, max_length=MAX_IDS)
    categories: list[Category] | None = Field(default=None, max_length=MAX_CATEGORIES)
    exclude_history: bool = True
    user_id: str | None = Field(default=None, max_length=256)
    constrained: bool = True
    start_with_item: bool = False  # prime the answer with `<|sid_begin|>` (the next-item task's format)
    k: int | None = Field(default=None, ge=1, le=10)  # items in a recommendation answer (default: from the words, else 3)
    mode: Literal["auto", "model"] = "auto"  # auto: recommendation turns retrieve (see chatrec.chat); model: free generation


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions request (fields chatrec does not use are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # torch seeds a generator with a long
    user: str | None = Field(default=None, max_length=256)
    ignore_eos: bool = False  # vLLM's extra parameter: generate exactly max_tokens (benchmarks)
    chatrec: ChatrecOptions | None = None
    vllm_xargs: dict[str, Any] | None = None  # vLLM's per-request extra args; `chatrec` key as in vLLM

    @field_validator("vllm_xargs")
    @classmethod
    def _xargs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """Same rules as the vLLM processor's `validate_params`: `chatrec: {exclude, categories}`."""
        args = (v or {}).get("chatrec")
        if args is None:
            return v
        if not isinstance(args, dict):
            raise ValueError("vllm_xargs.chatrec must be an object")
        unknown = sorted(set(args) - {"exclude", "categories"})
        if unknown:
            raise ValueError(f"unknown keys {unknown} in vllm_xargs.chatrec; allowed: ['categories', 'exclude']")
        for key, most, chars in (("exclude", MAX_IDS, MAX_ID_CHARS), ("categories", MAX_CATEGORIES, MAX_CATEGORY_CHARS)):
            value = args.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError(f"vllm_xargs.chatrec.{key} must be a list of strings")
            if len(value) > most:
                raise ValueError(f"vllm_xargs.chatrec.{key} has {len(value)} entries; at most {most}")
            if any(not 0 < len(x) <= chars for x in value):
                raise ValueError(f"vllm_xargs.chatrec.{key}: every entry must be 1 to {chars} characters")
        return v

    def options(self) -> ChatrecOptions:
        """`chatrec` options, also read from `vllm_xargs.chatrec` ({"exclude", "categories"}).

        The merge is validated again (not `model_copy`, which skips validation), so the combined
        exclude list obeys the same bounds as either source.
        """
        opts = self.chatrec or ChatrecOptions()
        xargs = (self.vllm_xargs or {}).get("chatrec")
        if isinstance(xargs, dict):
            opts = ChatrecOptions.model_validate({
                **opts.model_dump(),
                "exclude_item_ids": [*opts.exclude_item_ids, *map(str, xargs.get("exclude") or [])],
                "categories": xargs.get("categories", opts.categories),
            })
        return opts


class RecommendationsRequest(BaseModel):
    """Structured top-K for a history and an optional text request."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    history: list[HistoryItem] = Field(default_factory=list, max_length=500)
    request: str | None = Field(default=None, max_length=4000)
    k: int = Field(default=10, ge=1, le=100)
    exclude_item_ids: list[ItemId] = Field(default_factory=list, max_length=MAX_IDS)
    categories: list[Category] | None = Field(default=None, max_length=MAX_CATEGORIES)
    exclude_history: bool = True


class RankRequest(BaseModel):
    """Rank given candidates by a value of P(action | history, item)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    history: list[HistoryItem] = Field(default_factory=list, max_length=500)
    candidates: list[ItemId] = Field(min_length=1, max_length=200)
    value: str = Field(default="like - 10*dislike", max_length=200)

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        """Parsed here, so a malformed value function is a 400 naming `value`."""
        from chatrec.errors import ConfigError
        from chatrec.retrieval import ValueFunction

        try:
            ValueFunction.parse(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v


class FeedbackEvent(BaseModel):
    """One interaction in the log schema (`user_id`, `item_id`, `action`, `timestamp`, `context`)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    action: Action = Field(max_length=64)
    timestamp: dt.datetime | None = None
    context: dict[str, Any] | None = None


class FeedbackRequest(BaseModel):
    """Either one event (flat fields) or `events: [...]`."""

    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEvent] | None = Field(default=None, max_length=1000)
    user_id: str | None = None
    item_id: str | None = None
    action: str | None = None
    timestamp: dt.datetime | None = None
    context: dict[str, Any] | None = None

    def all_events(self) -> list[FeedbackEvent]:
        out = list(self.events or [])
        if self.item_id is not None or self.user_id is not None or self.action is not None:
            out.append(FeedbackEvent(user_id=self.user_id or "", item_id=self.item_id or "",
                                     action=self.action or "", timestamp=self.timestamp, context=self.context))
        return out


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str | None = None
