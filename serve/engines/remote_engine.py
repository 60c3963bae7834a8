"""The remote engine: chatrec as a gateway over any vLLM OpenAI server that serves the bundle's model
with the chatrec logits processor (`--logits-processors serve.vllm_processor:ChatrecLogitsProcessor`).

Everything chatrec adds (prompts, filters, retrieval, ranking, rendering, feedback) runs here; the
upstream only scores and generates token ids through its `/v1/completions` API, which takes token-id
prompts and vLLM's extensions:

- scoring (`next_token_logprobs`): one request per retrieval level with every beam's prompt as a
  batch (`prompt: [[ids], ...]`), `max_tokens=1` and `logprob_token_ids` (the full-vocabulary
  log-probs of exactly the trie's children); the upstream's prefix cache holds the shared history;
- generation: a streamed completion with `return_tokens_as_token_ids`, `logprobs=1`, and the span
  constraint switched on through flat `vllm_xargs` (`chatrec`, `chatrec_exclude`,
  `chatrec_categories`), which the processor reads in the upstream's engine.

The gateway holds no model, only the tokenizer, so several replicas can run behind a load balancer.
An unreachable upstream is a 502 and a slow one a 504 (`UpstreamError`), answered within `timeout`.

The gateway does not trust its upstream: it sends the upstream's key (`api_key`), checks with one
probe (`verify`) that the upstream applies the constraint before it generates through it (at start
when the upstream answers, which refuses to start on an unconstrained upstream; else on first use,
and again after the upstream was unreachable), checks every generated token against the request's
own constraint state, and answers a malformed upstream reply with a 502. Client messages never name
the upstream's URL (it may carry credentials); the server log does.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.constrained import ConstraintCore
from chatrec.engine import GenerationParams, TokenStep
from chatrec.errors import ChatrecError

MAX_LABEL_IDS = 128  # logprob_token_ids per request (vLLM returns one entry per id)


class UpstreamError(ChatrecError):
    """The upstream vLLM server failed: `status` 502 (unreachable, bad answer) or 504 (timed out)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


HEALTH_TIMEOUT = 1.0  # seconds an upstream health probe may take
PROBE_TIMEOUT = 10.0  # seconds the constraint probe at start may take (then it runs on first use)
PROBE_BIAS = 100.0  # logit bias (vLLM's maximum) on a token the constraint forbids after `<|sid_begin|>`
log = logging.getLogger("chatrec.serve")


class UnconstrainedUpstreamError(UpstreamError):
    """The upstream answers but does not apply the chatrec constraint (no processor loaded)."""

    def __init__(self, detail: str):
        super().__init__("the upstream vLLM server does not apply the chatrec constraint; start it with "
                         f"`--logits-processors serve.vllm_processor:ChatrecLogitsProcessor` ({detail})")


class RemoteEngine:
    """Engine protocol over an upstream vLLM OpenAI server."""

    name = "remote"

    def __init__(self, model_dir: str | Path, core: ConstraintCore | None = None, *, url: str,
                 timeout: float = 60.0, model: str | None = None, api_key: str | None = None):
        import httpx
        from transformers import AutoTokenizer

        from serve.engines.transformers_engine import _eos_ids

        self.model_dir = Path(model_dir)
        self.core = core
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.shown_url = _without_credentials(self.url)  # for the server log; clients see no URL at all
        self.timeout = timeout
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.eos_ids = _eos_ids(self.tokenizer, None)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)), headers=headers,
                                  limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self._model = model
        self._constrained: bool | None = None  # the probe's answer; None: not asked yet (or upstream was down)
        try:
            self.verify(timeout=min(PROBE_TIMEOUT, timeout))
        except UnconstrainedUpstreamError:
            self.close()
            raise
        except UpstreamError as exc:  # down or slow now: checked before the first generation instead
            log.warning("upstream %s not answering at start (%s); the constraint probe runs on first use",
                        self.shown_url, exc)

    # upstream ------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The upstream's model id (its `--served-model-name`, by default the model path)."""
        if self._model is None:
            self._model = self._models(None)
        return self._model

    def _models(self, timeout: float | None) -> str:
        data = self._call("GET", "/models", timeout=timeout)
        with _reply("model list"):
            return str(data["data"][0]["id"])

    @contextlib.contextmanager
    def _transport(self) -> Iterator[None]:
        """httpx failures as `UpstreamError`: a timeout is a 504, anything else a 502. The upstream
        may have been restarted (without the processor) while it was away: probe it again."""
        import httpx

        try:
            yield
        except httpx.TimeoutException:
            self._constrained = None
            log.warning("upstream %s timed out", self.shown_url)
            raise UpstreamError(f"the upstream vLLM server did not answer within {self.timeout:.0f} s", 504) from None
        except httpx.HTTPError as exc:
            self._constrained = None
            log.warning("upstream %s unreachable: %s", self.shown_url, exc.__class__.__name__)
            raise UpstreamError(f"the upstream vLLM server is unreachable ({exc.__class__.__name__})") from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        import httpx

        with self._transport():
            r = self._http.request(method, self.url + path, json=body,
                                   timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        if r.status_code >= 400:
            raise _upstream_status(r.status_code, r.text)
        with _reply("answer"):
            return r.json()

    def health(self) -> str:
        """`ok`, `unreachable`, or `unconstrained` (answers, but without the chatrec processor).
        Within a second at most, so `/health` stays fast (a load balancer's or a client's probe
        would otherwise wait out the whole upstream timeout)."""
        try:
            self._models(min(HEALTH_TIMEOUT, self.timeout))
        except UpstreamError:
            return "unreachable"
        return "unconstrained" if self._constrained is False else "ok"

    def verify(self, timeout: float | None = None) -> None:
        """One probe: after `<|sid_begin|>`, with a +100 logit bias on a token the trie forbids there,
        a constrained upstream still writes a first-level code; one without the processor writes
        the biased token. Raises `UnconstrainedUpstreamError` (or `UpstreamError` when unreachable)."""
        if self.core is None:
            return
        self._models(timeout)
        span = self.core.span
        allowed = {int(t) for t in self.core.trie.allowed_next([])}
        text = self.tokenizer("Try ", add_special_tokens=False)["input_ids"] or [int(self.eos_ids[0])]
        bait = next(t for t in [*text, *self.eos_ids, span.sid_end] if int(t) not in allowed)
        data = self._call("POST", "/completions", {
            "model": self.model, "prompt": [*map(int, text), span.sid_begin], "max_tokens": 1, "temperature": 0.0,
            "logprobs": 1, "return_tokens_as_token_ids": True, "skip_special_tokens": False,
            "logit_bias": {str(int(bait)): PROBE_BIAS}, "vllm_xargs": {"chatrec": 1}}, timeout=timeout)
        with _reply("probe answer"):
            tokens = data["choices"][0]["logprobs"]["tokens"]
            got = _token_id(tokens[0]) if tokens else None
        self._constrained = got in allowed
        if not self._constrained:
            log.error("upstream %s wrote token %s after <|sid_begin|> where the trie allows only codes", self.shown_url, got)
            raise UnconstrainedUpstreamError(f"the probe got token {got}, not a first-level code")

    def _ensure_verified(self) -> None:
        if self._constrained is not True:
            self.verify()

    # engine protocol -----------------------------------------------------------------------------
    def next_token_logprobs(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                            token_ids: Sequence[int]) -> np.ndarray:
        token_ids = [int(t) for t in token_ids]
        out = np.full((len(continuations), len(token_ids)), -np.inf)
        prompts = [[*map(int, prefix_ids), *map(int, c)] for c in continuations]
        for start in range(0, len(token_ids), MAX_LABEL_IDS):
            chunk = token_ids[start:start + MAX_LABEL_IDS]
            data = self._call("POST", "/completions", {
                "model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                "logprob_token_ids": chunk, "return_tokens_as_token_ids": True, "skip_special_tokens": False})
            with _reply("scoring answer"):
                for choice in data["choices"]:
                    row = int(choice["index"])
                    top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
                    for key, value in (top[0] or {}).items():
                        tid = _token_id(key)
                        if tid is not None and tid in chunk:
                            out[row, start + chunk.index(tid)] = float(value)
        return out

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams) -> Iterator[TokenStep]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": [int(t) for t in prompt_ids], "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "stream": True, "logprobs": 1,
            "return_tokens_as_token_ids": True, "skip_special_tokens": False, "ignore_eos": params.ignore_eos,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop_token_ids:
            body["stop_token_ids"] = [int(t) for t in params.stop_token_ids]
        state = None
        if params.constrained:
            if self.core is None:
                raise ValueError("constrained generation needs a ConstraintCore")
            self._ensure_verified()
            state = self.core.new_state(prompt_ids, params.allowed_items)  # each token is checked here too
            xargs: dict[str, Any] = {"chatrec": 1}
            if params.exclude_item_ids:
                xargs["chatrec_exclude"] = list(params.exclude_item_ids)
            if params.categories is not None:
                xargs["chatrec_categories"] = list(params.categories)
            body["vllm_xargs"] = xargs
        with self._transport(), self._http.stream("POST", self.url + "/completions", json=body) as r:
            if r.status_code >= 400:
                raise _upstream_status(r.status_code, r.read().decode("utf-8", "replace"))
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                with _reply("stream line"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        log.error("upstream stream error: %s", str(chunk["error"])[:2000])
                        raise UpstreamError("the upstream vLLM server failed during generation (see the server log)")
                    steps = [(tid, float("nan") if value is None else float(value))
                             for choice in chunk.get("choices") or []
                             for key, value in zip((choice.get("logprobs") or {}).get("tokens") or [],
                                                   (choice.get("logprobs") or {}).get("token_logprobs") or [],
                                                   strict=False)
                             if (tid := _token_id(key)) is not None]
                for tid, value in steps:
                    if state is not None:
                        _check_token(state, tid)
                    yield TokenStep(tid, value)

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: GenerationParams) -> list[list[int]]:
        return [[s.token_id for s in self.generate(p, params)] for p in prompts]

    def close(self) -> None:
        self._http.close()


def _without_credentials(url: str) -> str:
    """`url` without `user:password@`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@contextlib.contextmanager
def _reply(what: str) -> Iterator[None]:
    """A reply of the wrong shape (not JSON, missing fields, wrong types) is the upstream's fault: 502."""
    try:
        yield
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        if isinstance(exc, ChatrecError):
            raise
        log.error("malformed upstream %s: %r", what, exc)
        raise UpstreamError(f"the upstream vLLM server sent a malformed {what}") from None


def _check_token(state: Any, token_id: int) -> None:
    """Feed one generated token to the request's own span state; a token the constraint forbids
    (a code outside a span, a child the trie or the request's filter does not allow) is a 502."""
    core = state.core
    allowed = state.allowed_tokens()
    ok = token_id in allowed if allowed is not None else token_id not in core.banned
    if not ok:
        log.error("upstream wrote token %d, which this request's constraint forbids", token_id)
        raise UnconstrainedUpstreamError(f"it wrote token {token_id}, which this request's constraint forbids")
    state.feed([token_id])


def _token_id(key: str) -> int | None:
    """`return_tokens_as_token_ids` renders tokens as `token_id:123`."""
    if not isinstance(key, str):
        return None
    if key.startswith("token_id:"):
        try:
            return int(key[9:])
        except ValueError:
            return None
    return None


def _upstream_status(status: int, text: str) -> ChatrecError:
    """An upstream 4xx is the request's fault (400 here); anything else is a 502."""
    from serve.engines.vllm_engine import EngineRequestError

    try:
        message = json.loads(text).get("error", {}).get("message") or text
    except (ValueError, AttributeError):
        message = text
    if status in (401, 403):  # the gateway's key, not the client's request
        log.error("upstream refused the gateway's key (%d): %s", status, str(message)[:500])
        return UpstreamError(f"the upstream vLLM server refused the gateway ({status}); check --upstream-api-key")
    if 400 <= status < 500:
        return EngineRequestError(f"the upstream refused the request: {str(message)[:500]}")
    log.error("upstream answered %d: %s", status, str(message)[:2000])
    return UpstreamError(f"the upstream vLLM server answered {status}")
