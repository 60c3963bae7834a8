"""The serving logic behind the HTTP routes: chat, recommendations, ranking, feedback, reload.

`ChatService` holds one `Recommender` (one bundle, one engine) and is immutable once built;
`ServiceHolder` swaps a freshly built service in atomically on reload and closes the old one
when its last in-flight request finishes, so a reload never drops a request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chatrec.constrained import FilterError
from chatrec.engine import GenerationParams
from chatrec.errors import ChatrecError, ConfigError
from chatrec.prompts import history_text
from chatrec.recommender import CostLimits, LimitError, Recommendation, Recommender, UnknownItemError
from chatrec.retrieval import LAST_LEVELS, SERVED_LAST_LEVEL
from chatrec.tokens import escape_special_tokens, sid_string
from serve.engines import ENGINES
from serve.feedback import CHATS_FILE, FEEDBACK_FILE, JsonlLog, LogFullError, interaction_row
from serve.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    RankRequest,
    RecommendationsRequest,
)
from serve.render import SpanRenderer


class APIError(Exception):
    """An error answered in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ServeConfig:
    """`chatrec serve` settings."""

    bundle: str = field(metadata={"help": "Bundle directory to serve (uses export/ when present, else model/)."})
    engine: str = field(default="auto", metadata={"help": "Engine: vllm, transformers, or auto (vllm when installed)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address (loopback by default)."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(default=None, metadata={"help": "Require `Authorization: Bearer KEY` (also CHATREC_API_KEY)."})
    model_name: str = field(default="chatrec", metadata={"help": "Model id clients pass as `model`."})
    log_chats: bool = field(default=False, metadata={"help": "Log served chats to BUNDLE/logs/chats.jsonl."})
    max_messages: int = field(default=64, metadata={"help": "Most messages per chat request."})
    max_request_bytes: int = field(default=256 * 1024, metadata={"help": "Largest request body in bytes."})
    max_tokens_limit: int = field(default=1024, metadata={"help": "Largest `max_tokens` a request may ask for."})
    default_max_tokens: int = field(default=256, metadata={"help": "`max_tokens` when a request gives none."})
    max_model_len: int = field(default=2048, metadata={"help": "Longest prompt + answer in tokens."})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "Longest prompt of any route, in tokens."})
    max_beam_tokens: int = field(
        default=131_072, metadata={"help": "Largest beams x prompt tokens of one `/v1/recommendations` call (k=100 "
                                           "keeps 200 beams)."})
    max_rank_tokens: int = field(
        default=131_072, metadata={"help": "Largest candidates x prompt tokens of one `/v1/rank` call."})
    max_context_bytes: int = field(default=4096, metadata={"help": "Largest feedback `context`, as JSON bytes."})
    feedback_per_minute: int = field(
        default=600, metadata={"help": "Feedback events accepted per API key (or client address) per minute."})
    max_log_bytes: int = field(
        default=1 << 30, metadata={"help": "Size cap of each log file (feedback, chats); a full log answers 507."})
    admin_key: str | None = field(
        default=None, metadata={"help": "Key for `/v1/admin/*` (also CHATREC_ADMIN_KEY); unset: reload only by SIGHUP."})
    reload_bundles: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Bundles `/v1/admin/reload` may switch to, by name (NAME=PATH)."})
    allowed_hosts: tuple[str, ...] = field(
        default=(), metadata={"help": "Host header values accepted besides the loopback names and --host."})
    insecure: bool = field(
        default=False, metadata={"help": "Allow a non-loopback --host without --api-key."})
    upstream: str | None = field(
        default=None, metadata={"help": "URL of a vLLM OpenAI server serving this bundle's export with the chatrec "
                                        "logits processor: chatrec then runs as a gateway over it (engine `remote`)."})
    upstream_timeout: float = field(default=60.0, metadata={"help": "Seconds to wait for the upstream (then 504)."})
    upstream_api_key: str | None = field(
        default=None, metadata={"help": "Key the gateway sends to the upstream (its `--api-key`; also "
                                        "CHATREC_UPSTREAM_API_KEY)."})
    stream_stall_seconds: float = field(
        default=30.0, metadata={"help": "A streaming client that reads nothing for this long is cut off (its "
                                        "generation stops and frees the engine)."})
    kv_cache_gib: float = field(
        default=1.0, metadata={"help": "vLLM engine on CPU: memory for the KV cache every request shares, in GiB "
                                       "(VLLM_CPU_KVCACHE_SPACE, when set, wins; on a GPU vLLM sizes it itself)."})
    search: str = field(
        default="beam", metadata={"help": "Top-K search over the item trie: beam, or best_first (exact top-k)."})
    trim_history: bool = field(
        default=True, metadata={"help": "Plain recommendations: drop up to an eighth of the oldest history events "
                                        "so the prompt ends one token past a whole 32-token KV block, which vLLM's "
                                        "prefix cache then reuses for every beam (the same prompt on every engine)."})
    last_level: str = field(
        default=SERVED_LAST_LEVEL, metadata={"help": "Retrieval scores on the SID's last (disambiguation) level: "
                                                     "prior (no model call; scored like the model on ML-100k) or "
                                                     "model."})

    def __post_init__(self) -> None:
        if self.upstream:
            if self.engine not in ("auto", "remote"):
                raise ConfigError(f"--upstream runs the gateway (engine remote); drop --engine {self.engine}")
            self.engine = "remote"
        elif self.engine == "remote":
            raise ConfigError("engine `remote` needs --upstream URL (a vLLM OpenAI server)")
        if self.upstream_timeout <= 0:
            raise ConfigError(f"`upstream_timeout` must be > 0, got {self.upstream_timeout}")
        if self.stream_stall_seconds <= 0:
            raise ConfigError(f"`stream_stall_seconds` must be > 0, got {self.stream_stall_seconds}")
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"`kv_cache_gib` must be > 0, got {self.kv_cache_gib}")
        if self.engine == "auto":
            from chatrec.deps import is_vllm_available

            self.engine = "vllm" if is_vllm_available() else "transformers"
        if self.engine not in ENGINES:
            raise ConfigError(f"`engine` must be one of {list(ENGINES)}, got {self.engine!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"`port` must be in 1..65535, got {self.port}")
        for name in LIMITS:
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigError(f"`default_max_tokens` ({self.default_max_tokens}) must be <= "
                              f"`max_tokens_limit` ({self.max_tokens_limit})")
        if not is_loopback(self.host) and not self.api_key and not self.insecure:
            raise ConfigError(f"refusing to bind {self.host} (not loopback) without an API key: pass --api-key "
                              "(or set CHATREC_API_KEY), or --insecure if this network is trusted")
        if self.search not in ("beam", "best_first"):
            raise ConfigError(f"`search` must be 'beam' or 'best_first', got {self.search!r}")
        if self.last_level not in LAST_LEVELS:
            raise ConfigError(f"`last_level` must be one of {', '.join(LAST_LEVELS)}, got {self.last_level!r}")
        if self.admin_key and self.admin_key == self.api_key:
            raise ConfigError("--admin-key must differ from --api-key (a client key must not reload the server)")

    @property
    def hosts(self) -> frozenset[str]:
        """Host header names (without port) this server answers: loopback, --host, --allowed-hosts."""
        names = {"localhost", "127.0.0.1", "::1", "[::1]", *self.allowed_hosts}
        if self.host not in ("0.0.0.0", "::"):
            names.add(self.host)
        return frozenset(names)


# request-cost settings checked before work starts (one table in README "Serving limits")
LIMITS = ("max_messages", "max_request_bytes", "max_tokens_limit", "default_max_tokens", "max_model_len",
          "max_prompt_tokens", "max_beam_tokens", "max_rank_tokens", "max_context_bytes", "feedback_per_minute",
          "max_log_bytes")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def over_limit(what: str, value: int, setting: str, limit: int, param: str | None = None) -> APIError:
    """A 400 that names the limit and the `chatrec serve` option that sets it."""
    option = "--" + setting.replace("_", "-")
    return APIError(400, f"{what} ({value}) exceeds the limit {limit} (set by `chatrec serve {option}`)",
                    param=param, code="limit_exceeded")


REPEAT_NGRAM = 8  # tokens; a span of this many repeated inside one answer is a loop


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def served_recommender(config: ServeConfig, bundle: str | None = None,
                       model_dir: str | os.PathLike[str] | None = None) -> Recommender:
    """The recommender `chatrec serve` answers with: its engine, engine settings, search and limits.

    `chatrec eval` scores the LLM through this same function, so the number it reports is the
    number the server's default path returns (`model_dir`: e.g. a training snapshot to score).
    """
    kwargs: dict[str, Any] = {}
    if config.engine == "vllm":
        kwargs.update(max_model_len=config.max_model_len, kv_cache_gib=config.kv_cache_gib)
    if config.engine == "remote":
        kwargs.update(url=config.upstream, timeout=config.upstream_timeout, api_key=config.upstream_api_key)
    rec = Recommender.from_bundle(bundle or config.bundle, engine=config.engine, model_dir=model_dir, **kwargs)
    configure(rec, config)
    return rec


def configure(recommender: Recommender, config: ServeConfig) -> None:
    """Apply the serving settings that change what retrieval returns or may cost."""
    recommender.limits = CostLimits(config.max_prompt_tokens, config.max_beam_tokens, config.max_rank_tokens)
    recommender.search = config.search
    recommender.last_level = config.last_level
    recommender.trim_history = config.trim_history


class ChatService:
    """One bundle + engine behind the routes. Thread-safe; built once, never mutated."""

    def __init__(self, config: ServeConfig, recommender: Recommender):
        self.config = config
        self.rec = recommender
        configure(recommender, config)
        self.created = int(time.time())
        logs = recommender.bundle.logs_dir
        self.feedback_log = JsonlLog(logs / FEEDBACK_FILE, config.max_log_bytes)
        self.chat_log = JsonlLog(logs / CHATS_FILE, config.max_log_bytes) if config.log_chats else None
        self.actions = frozenset(recommender.token_map.actions)
        from chatrec.dialogue import Conversation

        self.conversation = Conversation.for_recommender(recommender)  # the text encoder loads once, here
        self.domain = recommender.bundle.domain
        self.sids = {item_id: sid_string(codes) for item_id, codes in recommender.codes.items()}
        self.eos_ids = tuple(getattr(recommender.engine, "eos_ids", ()))
        # no token spells more characters than the vocabulary's longest entry, so a text longer than
        # max_prompt_tokens x this cannot fit: refused before escaping and tokenizing it (up to 256 KB)
        vocab = recommender.engine.tokenizer.get_vocab()
        self.max_token_chars = max(map(len, vocab), default=1)

    @classmethod
    def build(cls, config: ServeConfig, bundle: str | None = None) -> ChatService:
        return cls(config, served_recommender(config, bundle))

    def close(self) -> None:
        self.rec.close()

    # models --------------------------------------------------------------------------------------
    @property
    def model_ids(self) -> list[str]:
        return [self.config.model_name]

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_ids:
            raise APIError(404, f"The model `{model}` does not exist; this server serves {self.model_ids}",
                           param="model", code="model_not_found")

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": self.created, "owned_by": "chatrec",
             "items": int(self.rec.core.trie.n_items)} for m in self.model_ids]}

    # chat ----------------------------------------------------------------------------------------
    def _check_chat(self, req: ChatCompletionRequest) -> tuple[Any, int, list[Any], Any]:
        """The checks every chat turn passes first: (options, max_tokens, history events, item mask)."""
        self.check_model(req.model)
        cfg = self.config
        if len(req.messages) > cfg.max_messages:
            raise APIError(400, f"too many messages: {len(req.messages)} > {cfg.max_messages}",
                           param="messages", code="too_many_messages")
        max_tokens = req.max_completion_tokens or req.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens must be <= {cfg.max_tokens_limit}, got {max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")
        chars = sum(len(m.text()) for m in req.messages)
        if chars > cfg.max_prompt_tokens * self.max_token_chars:
            raise over_limit(f"message characters (more than {cfg.max_prompt_tokens} prompt tokens)", chars,
                             "max_prompt_tokens", cfg.max_prompt_tokens * self.max_token_chars, "messages")
        opts = req.options()
        try:
            events = self.rec.events([(h.item_id, h.action) for h in opts.history])
            exclude = list(opts.exclude_item_ids) + ([h.item_id for h in opts.history] if opts.exclude_history else [])
            allowed = self.rec.allowed(exclude, opts.categories)
        except (UnknownItemError, FilterError) as exc:
            raise APIError(400, str(exc), param="chatrec", code="invalid_filter") from None
        return opts, max_tokens, events, (allowed, tuple(exclude))

    def _prepare_chat(self, req: ChatCompletionRequest, checked: tuple[Any, int, list[Any], Any]
                      ) -> tuple[list[int], GenerationParams, dict[str, Any]]:
        """The model's prompt and sampling for a turn that passed `_check_chat` (`checked`)."""
        cfg = self.config
        opts, max_tokens, events, (allowed, exclude) = checked
        tok = self.rec.engine.tokenizer  # a client's words: special tokens typed in them stay text
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": escape_special_tokens(m.text(), tok)} for m in req.messages]
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.rec.domain.system_prompt})
        if events:  # in the first user message (as training puts it): a next turn extends this prompt,
            # so the engines' prefix caches reuse it instead of computing the history again
            first_user = min((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            line = f"History: {history_text(events)}"
            if first_user is None:
                messages.append({"role": "user", "content": line})
            else:
                messages[first_user] = {"role": "user", "content": f"{line}\n{messages[first_user]['content']}"}
        prompt = self.rec.prompt_ids(messages, [self.rec.token_map.sid_begin] if opts.start_with_item else [])
        if len(prompt) > cfg.max_prompt_tokens:
            raise over_limit("prompt tokens", len(prompt), "max_prompt_tokens", cfg.max_prompt_tokens, "messages")
        if len(prompt) + max_tokens > cfg.max_model_len:
            raise APIError(400, f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the "
                           f"context length {cfg.max_model_len}", param="messages", code="context_length_exceeded")
        params = GenerationParams(
            max_tokens=max_tokens, temperature=0.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, constrained=opts.constrained,
            allowed_items=allowed, stop_token_ids=() if req.ignore_eos else self.eos_ids,
            ignore_eos=req.ignore_eos, exclude_item_ids=exclude,
            categories=tuple(opts.categories) if opts.categories is not None else None)
        meta = {"user_id": opts.user_id or req.user or "anonymous", "messages": messages,
                "start_in_span": opts.start_with_item, "extra": {"turn": "model"}}
        return prompt, params, meta

    def _renderer(self, meta: dict[str, Any]) -> SpanRenderer:
        renderer = SpanRenderer(self.rec.engine.tokenizer, self.rec.core, self.rec.titles, self.sids)
        if meta.get("start_in_span"):
            renderer.open_span()
        return renderer

    def _steps(self, prompt: list[int], params: GenerationParams) -> Iterator[Any]:
        """Engine tokens up to (not including) a stop token; the last value is the finish reason.

        A repetition loop ends the answer: when the last `REPEAT_NGRAM` tokens already occurred
        in this answer, generation stops there (finish reason "stop") instead of repeating a
        sentence until `max_tokens`.
        """
        stops = set(params.stop_token_ids)
        n = 0
        out: list[int] = []
        grams: set[tuple[int, ...]] = set()
        gen = self.rec.engine.generate(prompt, params)
        try:
            for step in gen:
                if step.token_id in stops:
                    yield "stop"
                    return
                out.append(step.token_id)
                if len(out) >= REPEAT_NGRAM:
                    gram = tuple(out[-REPEAT_NGRAM:])
                    if gram in grams:
                        yield "stop"
                        return
                    grams.add(gram)
                n += 1
                yield step
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
        yield "length" if n >= params.max_tokens else "stop"

    def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        checked = self._check_chat(req)
        served = self._served_turn(req, checked[0])
        if served is not None:
            text, items, extra, n_prompt = served
            self._log_chat({"user_id": self._user(req), "messages": self._client_messages(req)}, text, items)
            n_out = len(self.rec.engine.tokenizer(text, add_special_tokens=False)["input_ids"])
            return {
                "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": req.model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": text, "chatrec": {"items": items, **extra}}}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
                "chatrec": {"items": items, **extra},
            }
        prompt, params, meta = self._prepare_chat(req, checked)
        renderer = self._renderer(meta)
        finish = "stop"
        for step in self._steps(prompt, params):
            if isinstance(step, str):
                finish = step
            else:
                renderer.feed(step)
        renderer.finish()
        items = [i.to_json() for i in renderer.items]
        self._log_chat(meta, renderer.text, items)
        extra = meta["extra"]
        return {
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": renderer.text,
                                     "chatrec": {"items": items, **extra}}}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": renderer.n_tokens,
                      "total_tokens": len(prompt) + renderer.n_tokens},
            "chatrec": {"items": items, **extra},
        }

    def chat_stream(self, req: ChatCompletionRequest) -> Iterator[dict[str, Any]]:
        """Chunks of `chat.completion.chunk`; the last carries `finish_reason` and `chatrec.items`."""
        checked = self._check_chat(req)
        served = self._served_turn(req, checked[0])
        if served is not None:
            return self._stream_served(req, *served)
        prompt, params, meta = self._prepare_chat(req, checked)
        return self._stream(req, prompt, params, meta)

    def _stream_served(self, req: ChatCompletionRequest, text: str, items: list[dict[str, Any]],
                       extra: dict[str, Any], n_prompt: int) -> Iterator[dict[str, Any]]:
        cid, created = _completion_id(), int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **more}

        yield chunk({"role": "assistant", "content": ""})
        for line in text.splitlines(keepends=True):
            yield chunk({"content": line})
        self._log_chat({"user_id": self._user(req), "messages": self._client_messages(req)}, text, items)
        more: dict[str, Any] = {"chatrec": {"items": items, **extra}}
        if req.stream_options and req.stream_options.get("include_usage"):
            n_out = len(self.rec.engine.tokenizer(text, add_special_tokens=False)["input_ids"])
            more["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        yield chunk({}, "stop", **more)

    def _stream(self, req: ChatCompletionRequest, prompt: list[int], params: GenerationParams,
                meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cid, created = _completion_id(), int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}

        yield chunk({"role": "assistant", "content": ""})
        renderer = self._renderer(meta)
        finish = "stop"
        for step in self._steps(prompt, params):
            if isinstance(step, str):
                finish = step
                continue
            delta = renderer.feed(step)
            if delta:
                yield chunk({"content": delta})
        tail = renderer.finish()
        if tail:
            yield chunk({"content": tail})
        items = [i.to_json() for i in renderer.items]
        self._log_chat(meta, renderer.text, items)
        extra: dict[str, Any] = {"chatrec": {"items": items, **meta["extra"]}}
        if req.stream_options and req.stream_options.get("include_usage"):
            extra["usage"] = {"prompt_tokens": len(prompt), "completion_tokens": renderer.n_tokens,
                              "total_tokens": len(prompt) + renderer.n_tokens}
        yield chunk({}, finish, **extra)

    # served turns (chatrec.chat): recommendations, questions about a title, small talk ------------
    def _user(self, req: ChatCompletionRequest) -> str:
        opts = req.options()
        return opts.user_id or req.user or "anonymous"

    @staticmethod
    def _client_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in req.messages]

    def _served_turn(self, req: ChatCompletionRequest, opts: Any
                     ) -> tuple[str, list[dict[str, Any]], dict[str, Any], int] | None:
        """(text, items, chatrec extras, prompt tokens) of a turn the server answers (every turn in
        mode `auto`; the rules are `chatrec.dialogue`'s), or None for a turn the model writes."""
        if opts.mode != "auto" or not opts.constrained or opts.start_with_item:
            return None
        messages = [(m.role, m.text()) for m in req.messages if m.role in ("user", "assistant")]
        if not any(role == "user" for role, _ in messages):
            return None
        turn = self.conversation.answer(
            messages, self._retrieve, k=opts.k, categories=opts.categories, exclude_item_ids=opts.exclude_item_ids,
            history=[(h.item_id, h.action) for h in opts.history], exclude_history=opts.exclude_history)
        ids = self.conversation.index.ids
        items = [{"item_id": ids[i], "title": self.rec.titles[ids[i]], "sid": self.sids.get(ids[i], ""),
                  "score": round(score, 4)} for i, score in turn.items]
        n_prompt = len(self.rec.retrieval_prompt(turn.history, turn.request)) if turn.kind == "recommendation" else 0
        return turn.text, items, turn.extra, n_prompt

    def _retrieve(self, history: list[tuple[str, str]], k: int, request: str | None,
                  include: list[str] | None) -> list[str]:
        """The model's constrained retrieval for a chat turn (item ids, best first; none when no item passes)."""
        try:
            return [r.item_id for r in self.rec.recommend(history, k=k, request=request, include_item_ids=include)]
        except LimitError as exc:
            raise APIError(400, str(exc), param="messages", code="limit_exceeded") from None
        except UnknownItemError as exc:
            raise APIError(400, str(exc), param="chatrec", code="invalid_filter") from None
        except FilterError:
            return []

    def _log_chat(self, meta: dict[str, Any], answer: str, items: list[dict[str, Any]]) -> None:
        """With `--log-chats`: one interaction row per recommended item (action `recommended`),
        the conversation in `context`, so `chatrec finetune --logs` can use it."""
        if self.chat_log is None or not items:
            return
        # the conversation once per chat (its last user turn and the answer, each capped), not per item
        last_user = next((m["content"] for m in reversed(meta["messages"]) if m["role"] == "user"), "")
        cap = self.config.max_context_bytes
        chat_id = uuid.uuid4().hex[:16]
        first = {"chat_id": chat_id, "source": "chat", "user": last_user[:cap], "answer": answer[:cap]}
        try:
            self.chat_log.append([interaction_row(meta["user_id"], it["item_id"], "recommended",
                                                  context=first if i == 0 else {"chat_id": chat_id, "source": "chat"})
                                  for i, it in enumerate(items)])
        except LogFullError as exc:  # the answer is already made; a full chat log must not fail it
            logging.getLogger("chatrec.serve").warning("%s", exc)

    # recommendations, ranking, feedback ----------------------------------------------------------
    def recommend(self, req: RecommendationsRequest) -> dict[str, Any]:
        self.check_model(req.model)
        history = [(h.item_id, h.action) for h in req.history]
        try:
            recs = self._request_recs(req, history) if req.request and req.request.strip() else None
            if recs is None:  # no words, or words that ask for nothing: the model's own top-k
                recs = self.rec.recommend(history, k=req.k, request=req.request, exclude_item_ids=req.exclude_item_ids,
                                          categories=req.categories, exclude_history=req.exclude_history)
        except LimitError as exc:
            raise APIError(400, str(exc), param="k", code="limit_exceeded") from None
        except (UnknownItemError, FilterError) as exc:
            raise APIError(400, str(exc), param="history", code="invalid_filter") from None
        meta = self.rec.catalog.set_index("item_id")
        items = []
        for r in recs:
            row = meta.loc[r.item_id] if r.item_id in meta.index else None
            cats = [str(c) for c in row["categories"]] if row is not None and "categories" in row else []
            items.append({"item_id": r.item_id, "title": r.title, "sid": r.sid, "score": r.score, "categories": cats})
        return {"object": "chatrec.recommendations", "model": self.config.model_name, "items": items}

    def _request_recs(self, req: RecommendationsRequest, history: list[tuple[str, str]]) -> list[Recommendation] | None:
        """A request in words is read as the chat reads it (`Conversation.request_items`): the
        words' categories, years and titles, with the model's retrieval on the history as one signal."""
        self.rec.events(history)  # unknown items and actions: the same 400 as without words
        picked = self.conversation.request_items(req.request or "", self._retrieve, k=req.k, history=history,
                                                 categories=req.categories, exclude_item_ids=req.exclude_item_ids,
                                                 exclude_history=req.exclude_history)
        if picked is None:
            return None
        ids = self.conversation.index.ids
        return [Recommendation(ids[i], self.rec.titles[ids[i]], self.sids.get(ids[i], ""), float(score))
                for i, score in picked]

    def rank(self, req: RankRequest) -> dict[str, Any]:
        self.check_model(req.model)
        try:
            ranked = self.rec.rank([(h.item_id, h.action) for h in req.history], req.candidates, req.value)
        except LimitError as exc:
            raise APIError(400, str(exc), param="candidates", code="limit_exceeded") from None
        except (UnknownItemError, FilterError, ConfigError) as exc:
            raise APIError(400, str(exc), param="candidates", code="invalid_candidates") from None
        return {"object": "chatrec.ranking", "model": self.config.model_name, "items": [
            {"item_id": r.item_id, "title": self.rec.titles.get(r.item_id, r.item_id), "value": r.value,
             "probs": r.probs} for r in ranked]}

    def feedback(self, req: FeedbackRequest) -> dict[str, Any]:
        from pydantic import ValidationError

        try:
            events = req.all_events()
        except ValidationError as exc:
            err = exc.errors()[0]
            raise APIError(400, f"{'.'.join(map(str, err['loc']))}: {err['msg']}", param=str(err["loc"][0]),
                           code="invalid_feedback") from None
        if not events:
            raise APIError(400, "no feedback event given (send user_id, item_id, action or events: [...])",
                           param="events", code="invalid_feedback")
        unknown = [e.item_id for e in events if e.item_id not in self.rec.titles]
        if unknown:
            raise APIError(400, f"unknown item ids {unknown[:5]}", param="item_id", code="unknown_item")
        bad = sorted({e.action for e in events} - self.actions)
        if bad and self.actions:  # a new action name would become a new token at the next extension
            raise APIError(400, f"unknown actions {bad[:5]}; this model's actions are {sorted(self.actions)}",
                           param="action", code="unknown_action")
        import json

        for e in events:
            size = len(json.dumps(e.context, ensure_ascii=False).encode()) if e.context is not None else 0
            if size > self.config.max_context_bytes:
                raise over_limit("feedback context bytes", size, "max_context_bytes", self.config.max_context_bytes,
                                 "context")
        rows = [interaction_row(e.user_id, e.item_id, e.action, None, e.context, client_timestamp=e.timestamp)
                for e in events]
        try:
            written = self.feedback_log.append(rows)
        except LogFullError as exc:
            raise APIError(507, str(exc), type="server_error", code="log_full") from None
        return {"object": "chatrec.feedback", "written": written}


class ReloadBusy(ChatrecError):
    """A reload was asked while another one runs (HTTP 409)."""


class ServiceHolder:
    """The current service, swapped atomically on reload; old services close when idle."""

    def __init__(self, service: ChatService, factory: Callable[[str | None], ChatService]):
        self._service = service
        self._factory = factory
        self._inflight: dict[int, int] = {}
        self._retired: dict[int, ChatService] = {}
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.generation = 0

    @property
    def current(self) -> ChatService:
        return self._service

    @contextlib.contextmanager
    def use(self) -> Iterator[ChatService]:
        """The service for one request; it stays open until the request finishes."""
        with self._lock:
            svc = self._service
            self._inflight[id(svc)] = self._inflight.get(id(svc), 0) + 1
        try:
            yield svc
        finally:
            self._release(svc)

    def acquire(self) -> ChatService:
        with self._lock:
            svc = self._service
            self._inflight[id(svc)] = self._inflight.get(id(svc), 0) + 1
            return svc

    def _release(self, svc: ChatService) -> None:
        close = None
        with self._lock:
            self._inflight[id(svc)] -= 1
            if self._inflight[id(svc)] == 0 and id(svc) in self._retired:
                close = self._retired.pop(id(svc))
                del self._inflight[id(svc)]
        if close is not None:
            close.close()

    release = _release

    def swap(self, new: ChatService) -> None:
        """Make `new` current; the old service closes now if idle, else when its last request ends."""
        close = None
        with self._lock:
            old, self._service = self._service, new
            self.generation += 1
            if self._inflight.get(id(old), 0) == 0:
                self._inflight.pop(id(old), None)
                close = old
            else:
                self._retired[id(old)] = old
        if close is not None:
            close.close()

    def reload(self, bundle: str | None = None) -> dict[str, Any]:
        """Build a new service (slow: loads the engine) while the old one serves, then swap.

        `bundle` is a path chosen by the operator (SIGHUP, the CLI), never by a client: the HTTP
        route passes one from `--reload-bundles` by name. Raises `ReloadBusy` while another runs.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadBusy("a reload is already running; try again when it has finished")
        try:
            started = time.time()
            new = self._factory(bundle or str(self._service.rec.bundle.root))  # default: re-read the current bundle
            self.swap(new)
            return {"object": "chatrec.reload", "bundle": new.rec.bundle.root.name, "generation": self.generation,
                    "items": int(new.rec.core.trie.n_items), "seconds": round(time.time() - started, 2),
                    "reloaded_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        finally:
            self._reload_lock.release()

    def close(self) -> None:
        with self._lock:
            services = [self._service, *self._retired.values()]
            self._retired.clear()
        for svc in services:
            svc.close()


def error_for(exc: BaseException) -> APIError:
    """Map library errors raised while serving to HTTP errors."""
    if isinstance(exc, APIError):
        return exc
    from serve.engines.remote_engine import UpstreamError
    from serve.engines.vllm_engine import EngineRequestError

    if isinstance(exc, UpstreamError):
        return APIError(exc.status, str(exc), type="server_error",
                        code="upstream_timeout" if exc.status == 504 else "upstream_error")
    if isinstance(exc, (EngineRequestError, FilterError, UnknownItemError, ConfigError)):
        return APIError(400, str(exc))
    if isinstance(exc, ChatrecError):
        return APIError(500, str(exc), type="server_error")
    # a bug, not bad input: the client sees the class name, the server log the traceback
    logging.getLogger("chatrec.serve").error("internal error", exc_info=exc)
    return APIError(500, f"internal error: {exc.__class__.__name__}", type="server_error")
