"""The OpenAI-compatible HTTP app: thin routes over `serve.service`.

Why our own FastAPI app over an in-process engine rather than extending vLLM's OpenAI server:
both engines (vLLM and the transformers fallback) must serve one contract, and everything that
makes this a recommender lives outside vLLM's server anyway: resolving SID spans to catalog
items (titles in the text, the structured `chatrec.items` list), per-request filters built from a
user's history, `/v1/recommendations` (trie beam search), `/v1/rank`, durable `/v1/feedback`,
chat logging and reloading a bundle with new items without dropping requests. Extending vLLM's
server would mean a proxy or monkey-patching its serving classes for each of these, and would not
cover the transformers engine. vLLM is still used where it matters: the engine runs in process
(`vllm.LLM` with continuous batching, prefix caching and our v1 logits processor), and the same
processor plugs into stock vLLM's OpenAI server (`--logits-processors serve.vllm_processor:ChatrecLogitsProcessor`),
over which this app runs as a gateway with `--upstream` (`serve/engines/remote_engine.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.feedback import RateLimiter
from serve.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    RankRequest,
    RecommendationsRequest,
    ReloadRequest,
)
from serve.service import APIError, ReloadBusy, ServeConfig, ServiceHolder, error_for


def _error_response(err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class LimitsAndAuth:
    """ASGI middleware: the Host check, API keys (client key on `/v1/*`, admin key on `/v1/admin/*`)
    and a cap on request body bytes."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_bytes: int, admin_key: str | None = None,
                 hosts: frozenset[str] | None = None):
        self.app, self.api_key, self.max_bytes, self.admin_key, self.hosts = app, api_key, max_bytes, admin_key, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example
            await _error_response(APIError(421, "this server does not answer for that Host; add the name with "
                                                "`chatrec serve --allowed-hosts`", code="invalid_host"))(
                scope, receive, send)
            return
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if scope["path"].startswith("/v1/admin/"):
            if not self.admin_key:
                await _error_response(APIError(403, "admin routes are off; start the server with --admin-key "
                                                    "(or reload with SIGHUP)", code="admin_disabled"))(
                    scope, receive, send)
                return
            if not hmac.compare_digest(token.encode(), self.admin_key.encode()):
                await _error_response(APIError(401, "Incorrect or missing admin key; send `Authorization: Bearer "
                                                    "ADMIN_KEY`", code="invalid_api_key"))(scope, receive, send)
                return
        elif (self.api_key and scope["path"].startswith("/v1/")
              and not hmac.compare_digest(token.encode(), self.api_key.encode())):
            await _error_response(APIError(401, "Incorrect or missing API key; send `Authorization: Bearer KEY`",
                                           code="invalid_api_key"))(scope, receive, send)
            return
        too_big = APIError(400, f"request body exceeds {self.max_bytes} bytes", code="request_too_large")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _error_response(too_big)(scope, receive, send)
            return
        # chunked bodies without a length: count while reading
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                await _error_response(too_big)(scope, receive, send)
                return
            more = message.get("more_body", False)
        if _has_lone_surrogate(bytes(body)):
            await _error_response(APIError(400, "request body is not valid Unicode: a \\u escape is half of a "
                                                "surrogate pair", code="invalid_json"))(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _has_lone_surrogate(body: bytes) -> bool:
    """Does the JSON `body` hold a string with half a UTF-16 surrogate pair (`"\\ud800"`)? Python
    accepts one; the tokenizer, the logs and the response encoder all fail on it later (a 500)."""
    if b"\\u" not in body:
        return False
    try:
        stack = [json.loads(body)]
    except (ValueError, RecursionError):
        return False  # not JSON: the route's own parsing answers 400
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _host_name(host: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(holder: ServiceHolder, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving `holder`'s current service."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(None)))
        yield
        holder.close()

    app = FastAPI(title="chatrec", version="1", lifespan=lifespan)
    app.state.holder = holder
    app.add_middleware(LimitsAndAuth, api_key=config.api_key, max_bytes=config.max_request_bytes,
                       admin_key=config.admin_key, hosts=config.hosts)
    limiter = RateLimiter(config.feedback_per_minute)
    log = logging.getLogger("chatrec.serve")

    async def _reload(bundle: str | None) -> dict[str, Any]:
        try:
            return await run_in_threadpool(holder.reload, bundle)
        except ReloadBusy as exc:
            raise APIError(409, str(exc), code="reload_in_progress") from None
        except Exception as exc:  # the details (paths) go to the server log, not to the client
            log.exception("reload failed")
            raise APIError(500, f"reload failed ({exc.__class__.__name__}); the previous model keeps serving; "
                                "see the server log", type="server_error", code="reload_failed") from None

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        err: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            msg, code = f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", "invalid_json"
        else:
            msg, code = f"{'.'.join(loc) or 'body'}: {err['msg']}", str(err.get("type") or "invalid_request")
        return _error_response(APIError(400, msg, param=".".join(loc) or None, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(exc.status_code, str(exc.detail), code="invalid_request"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(error_for(exc))

    @app.get("/health")
    async def health() -> JSONResponse:
        svc = holder.current
        healthy = bool(getattr(svc.rec.engine, "healthy", True))  # the vLLM engine: is its step loop alive?
        out: dict[str, Any] = {"status": "ok" if healthy else "unhealthy", "engine": svc.config.engine,
                               "model": svc.config.model_name, "bundle": svc.rec.bundle.root.name,
                               "items": int(svc.rec.core.trie.n_items), "generation": holder.generation}
        if not healthy:
            out["error"] = "the engine stopped; every request fails until a reload (SIGHUP or /v1/admin/reload)"
        check = getattr(svc.rec.engine, "health", None)  # the gateway: is its upstream answering?
        if check is not None:
            out["upstream"] = await run_in_threadpool(check)
        return JSONResponse(out, status_code=200 if healthy else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return holder.current.models()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest) -> Any:
        svc = holder.acquire()
        if not req.stream:
            try:
                return await run_in_threadpool(svc.chat, req)
            except Exception as exc:
                raise error_for(exc) from None
            finally:
                holder.release(svc)
        try:
            chunks = await run_in_threadpool(svc.chat_stream, req)  # validates before the stream starts
        except Exception as exc:
            holder.release(svc)
            raise error_for(exc) from None
        release = _once(lambda: holder.release(svc))
        return StallGuardedStream(_sse(chunks, release), stall_seconds=config.stream_stall_seconds,
                                  media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                  background=BackgroundTask(release))

    @app.post("/v1/recommendations")
    async def recommendations(req: RecommendationsRequest) -> dict[str, Any]:
        with holder.use() as svc:
            try:
                return await run_in_threadpool(svc.recommend, req)
            except Exception as exc:
                raise error_for(exc) from None

    @app.post("/v1/rank")
    async def rank(req: RankRequest) -> dict[str, Any]:
        with holder.use() as svc:
            try:
                return await run_in_threadpool(svc.rank, req)
            except Exception as exc:
                raise error_for(exc) from None

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest, request: Request) -> Any:
        # one bucket per client identity, not per header value: with an API key every request that
        # got here carries that key (the middleware checked it); without one, the client's address
        key = "api-key" if config.api_key else f"addr:{request.client.host if request.client else '?'}"
        n = len(req.events or []) + (req.item_id is not None or req.user_id is not None or req.action is not None)
        wait = limiter.take(key, max(1, n))
        if wait:
            err = APIError(429, f"feedback rate limit: at most {config.feedback_per_minute} events per minute per "
                                "key (set by `chatrec serve --feedback-per-minute`)", type="rate_limit_error",
                           code="rate_limit_exceeded")
            retry = "60" if wait == float("inf") else str(int(wait) + 1)
            return JSONResponse(err.body(), status_code=429, headers={"Retry-After": retry})
        with holder.use() as svc:
            return await run_in_threadpool(svc.feedback, req)

    @app.post("/v1/admin/reload")
    async def reload(req: ReloadRequest | None = None) -> dict[str, Any]:
        name = req.bundle if req else None
        if name is None:
            return await _reload(None)  # re-read the bundle the server was started with
        if name not in config.reload_bundles:
            known = sorted(config.reload_bundles)
            raise APIError(400, f"unknown bundle name; the server allows {known} "
                                "(set by `chatrec serve --reload-bundles NAME=PATH`)", param="bundle",
                           code="unknown_bundle")
        return await _reload(config.reload_bundles[name])

    return app


class _Stalled(Exception):
    """The client read nothing of a stream for `stall_seconds`."""


class StallGuardedStream(StreamingResponse):
    """A stream whose client must keep reading: when one send waits longer than `stall_seconds`
    (the client stopped reading and the socket buffers are full), the response ends there and the
    generation behind it is closed, so a stalled reader holds no engine, upstream connection or
    cache for longer than that."""

    def __init__(self, content: AsyncIterator[str], *, stall_seconds: float, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.stall_seconds = stall_seconds

    async def stream_response(self, send: Send) -> None:
        async def guarded(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.stall_seconds)
            except TimeoutError:
                raise _Stalled from None

        try:
            await super().stream_response(guarded)
        except _Stalled:
            logging.getLogger("chatrec.serve").warning(
                "a streaming client read nothing for %.0f s; its stream was ended", self.stall_seconds)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn` that runs at most once (a stream's engine is released by whichever path ends it first)."""
    lock, done = threading.Lock(), [False]

    def run() -> None:
        with lock:
            if done[0]:
                return
            done[0] = True
        fn()

    return run


async def _sse(chunks: Iterator[dict[str, Any]], release: Callable[[], None]) -> AsyncIterator[str]:
    """Server-sent events: `data: {chunk}` lines, then `data: [DONE]`; errors become an error event."""
    try:
        async for chunk in iterate_in_threadpool(chunks):
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except Exception as exc:  # the stream has started: report in-band, as OpenAI does
        yield f"data: {json.dumps(error_for(exc).body())}\n\n"
    finally:
        # a client that went away must not leave the generation (and an engine lock) suspended
        with contextlib.suppress(Exception):
            await run_in_threadpool(getattr(chunks, "close", lambda: None))
        release()
    yield "data: [DONE]\n\n"
