"""A small client over a chatrec endpoint: chat streaming through the `openai` client, the rest through httpx.

Every failure becomes an `EndpointError` whose message a person can read on the page ("cannot
reach the chatrec server at http://…"), never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatrec.errors import ChatrecError

# chatrec's extra field, in requests (options) and responses (`{"items": [...]}`), see serve/protocol.py
CHATREC_FIELD = "chatrec"


class EndpointError(ChatrecError):
    """The chatrec endpoint is unreachable, rejected the request, or answered something unreadable."""

    exit_code = 7

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ChatDelta:
    """One piece of a streamed answer: new text, and the structured items once the server sends them."""

    text: str = ""
    items: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    linked: list[dict[str, Any]] | None = None  # titles the server linked in the user's words
    extra: dict[str, Any] | None = None  # the whole `chatrec` field (turn, filters, state) with the items


@dataclass
class ChatRequestOptions:
    """What the UI adds to a chat request beyond the messages."""

    history: list[dict[str, str]] = field(default_factory=list)
    exclude_seen: bool = True
    user_id: str | None = None
    max_tokens: int = 256
    temperature: float = 0.7


def _error_message_from_body(body: Any) -> str | None:
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
    return None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ChatrecClient:
    """HTTP client for one chatrec server (`endpoint` is its base URL, e.g. http://127.0.0.1:8000)."""

    def __init__(self, endpoint: str, api_key: str | None = None, *, timeout: float = 120.0,
                 model: str | None = None):
        import httpx

        self.endpoint = endpoint.rstrip("/")
        if self.endpoint.endswith("/v1"):
            self.endpoint = self.endpoint[: -len("/v1")]
        self.api_key = api_key
        self.timeout = timeout
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.endpoint, headers=headers, timeout=timeout)
        self._openai: Any = None

    # errors --------------------------------------------------------------------------------------
    def _unreachable(self) -> EndpointError:
        return EndpointError(
            f"cannot reach the chatrec server at {self.endpoint}; is `chatrec serve` running there?"
        )

    def _status_error(self, status: int, body: Any, text: str = "") -> EndpointError:
        msg = _one_line(_error_message_from_body(body) or text) or "no details"
        if status in (401, 403):
            text = f"the chatrec server refused the API key ({status}): {msg}"
        elif status == 404:
            text = f"the chatrec server at {self.endpoint} has no such endpoint (404): {msg}"
        elif status >= 500:
            text = f"the chatrec server failed ({status}): {msg}"
        else:
            text = f"the chatrec server rejected the request ({status}): {msg}"
        return EndpointError(text, status=status)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise EndpointError(f"the chatrec server at {self.endpoint} did not answer within {self.timeout:.0f} s") from None
        except httpx.HTTPError:
            raise self._unreachable() from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            raise self._status_error(resp.status_code, body, resp.text)
        try:
            return resp.json()
        except ValueError:
            raise EndpointError(f"the chatrec server at {self.endpoint} answered {path} with something that is not JSON") from None

    # simple endpoints ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/health"))

    def model(self) -> str:
        """The served model name (first of `/v1/models`), cached."""
        if self._model is None:
            data = self._request("GET", "/v1/models").get("data") or []
            if not data:
                raise EndpointError(f"the chatrec server at {self.endpoint} serves no model")
            self._model = str(data[0]["id"])
        return self._model

    def recommend(self, history: Sequence[Mapping[str, str]], *, k: int = 5, request: str | None = None,
                  exclude_seen: bool = True) -> list[dict[str, Any]]:
        """Structured top-K for a history (`POST /v1/recommendations`)."""
        body: dict[str, Any] = {"history": list(history), "k": k, "exclude_history": exclude_seen}
        if request:
            body["request"] = request
        data = self._request("POST", "/v1/recommendations", json=body)
        return [dict(i) for i in data.get("items") or []]

    def feedback(self, user_id: str, item_id: str, action: str, *, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record a like / dislike / click on an item (`POST /v1/feedback`)."""
        body: dict[str, Any] = {"user_id": user_id, "item_id": item_id, "action": action}
        if context:
            body["context"] = dict(context)
        return dict(self._request("POST", "/v1/feedback", json=body))

    def search_items(self, query: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """Catalog search (`GET /v1/items?q=`)."""
        data = self._request("GET", "/v1/items", params={"q": query, "limit": limit})
        rows = data.get("data", data.get("items", [])) if isinstance(data, Mapping) else data
        return [dict(r) for r in rows]

    # chat ----------------------------------------------------------------------------------------
    def _openai_client(self) -> Any:
        if self._openai is None:
            import openai

            self._openai = openai.OpenAI(base_url=f"{self.endpoint}/v1", api_key=self.api_key or "none",
                                         timeout=self.timeout, max_retries=0)
        return self._openai

    def chat_extra_body(self, options: ChatRequestOptions) -> dict[str, Any]:
        """The non-OpenAI request fields the chatrec server reads (history and filters)."""
        opts: dict[str, Any] = {"history": list(options.history), "exclude_history": options.exclude_seen}
        if options.user_id:
            opts["user_id"] = options.user_id
        return {CHATREC_FIELD: opts}

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], options: ChatRequestOptions | None = None) -> Iterator[ChatDelta]:
        """Stream an answer: `ChatDelta`s with text pieces; the one that carries the items has `items` set."""
        import openai

        options = options or ChatRequestOptions()
        try:
            stream = self._openai_client().chat.completions.create(
                model=self.model(), messages=list(messages), stream=True,
                max_tokens=options.max_tokens, temperature=options.temperature,
                extra_body=self.chat_extra_body(options),
            )
            for chunk in stream:
                extra = (chunk.model_extra or {}).get(CHATREC_FIELD)
                items = extra.get("items") if isinstance(extra, Mapping) else None
                linked = extra.get("linked") if isinstance(extra, Mapping) else None
                text, finish = "", None
                if chunk.choices:
                    choice = chunk.choices[0]
                    text = (choice.delta.content or "") if choice.delta else ""
                    finish = choice.finish_reason
                if text or items is not None or finish:
                    yield ChatDelta(text=text, items=list(items) if items is not None else None, finish_reason=finish,
                                    linked=list(linked) if linked is not None else None,
                                    extra=dict(extra) if isinstance(extra, Mapping) and items is not None else None)
        except openai.APITimeoutError:
            raise EndpointError(f"the chatrec server at {self.endpoint} did not answer within {self.timeout:.0f} s") from None
        except openai.APIConnectionError:
            raise self._unreachable() from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc.status_code, exc.body, str(exc.message)) from None
        except openai.OpenAIError as exc:
            raise EndpointError(f"the chatrec server at {self.endpoint} sent an unreadable answer: {_one_line(str(exc))}") from None

    def close(self) -> None:
        self._http.close()
        if self._openai is not None:
            self._openai.close()
