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
"""

from __future__ import annotations

import contextlib
import json
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
        self.timeout = timeout
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.eos_ids = _eos_ids(self.tokenizer, None)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)), headers=headers,
                                  limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self._model = model

    # upstream ------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The upstream's model id (its `--served-model-name`, by default the model path)."""
        if self._model is None:
            data = self._call("GET", "/models")
            self._model = str(data["data"][0]["id"])
        return self._model

    @contextlib.contextmanager
    def _transport(self) -> Iterator[None]:
        """httpx failures as `UpstreamError`: a timeout is a 504, anything else a 502."""
        import httpx

        try:
            yield
        except httpx.TimeoutException:
            raise UpstreamError(f"the upstream vLLM server at {self.url} did not answer within {self.timeout:.0f} s",
                                504) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream vLLM server at {self.url} is unreachable ({exc.__class__.__name__})"
                                ) from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        import httpx

        with self._transport():
            r = self._http.request(method, self.url + path, json=body,
                                   timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        if r.status_code >= 400:
            raise _upstream_status(r.status_code, r.text)
        return r.json()

    def health(self) -> bool:
        """Is the upstream answering? Within a second at most, so `/health` stays fast (a load
        balancer's or a client's probe would otherwise wait out the whole upstream timeout)."""
        try:
            self._call("GET", "/models", timeout=min(HEALTH_TIMEOUT, self.timeout))
            return True
        except UpstreamError:
            return False

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
        if params.constrained:
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
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise UpstreamError(f"the upstream vLLM server failed: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    lp = choice.get("logprobs") or {}
                    for key, value in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], strict=False):
                        tid = _token_id(key)
                        if tid is not None:
                            yield TokenStep(tid, float("nan") if value is None else float(value))

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: GenerationParams) -> list[list[int]]:
        return [[s.token_id for s in self.generate(p, params)] for p in prompts]

    def close(self) -> None:
        self._http.close()


def _token_id(key: str) -> int | None:
    """`return_tokens_as_token_ids` renders tokens as `token_id:123`."""
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
    if 400 <= status < 500:
        return EngineRequestError(f"the upstream refused the request: {str(message)[:500]}")
    return UpstreamError(f"the upstream vLLM server answered {status}: {str(message)[:300]}")
