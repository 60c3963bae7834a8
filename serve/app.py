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
processor is written to plug into stock `vllm serve --logits-processors serve.vllm_processor:ChatrecLogitsProcessor`
(it loads the trie from the model folder; that path is not tested yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    RankRequest,
    RecommendationsRequest,
    ReloadRequest,
)
from serve.service import APIError, ServeConfig, ServiceHolder, error_for


def _error_response(err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class LimitsAndAuth:
    """ASGI middleware: API key on `/v1/*` (when set) and a cap on request body bytes."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_bytes: int):
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"].startswith("/v1/"):
            auth = headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
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
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
    app.add_middleware(LimitsAndAuth, api_key=config.api_key, max_bytes=config.max_request_bytes)

    async def _reload(bundle: str | None) -> dict[str, Any]:
        return await run_in_threadpool(holder.reload, bundle)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(error_for(exc))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        svc = holder.current
        return {"status": "ok", "engine": svc.config.engine, "model": svc.config.model_name,
                "bundle": str(svc.rec.bundle.root), "items": int(svc.rec.core.trie.n_items),
                "generation": holder.generation}

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
        return StreamingResponse(_sse(chunks, holder, svc), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

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
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        with holder.use() as svc:
            return await run_in_threadpool(svc.feedback, req)

    @app.post("/v1/admin/reload")
    async def reload(req: ReloadRequest | None = None) -> dict[str, Any]:
        try:
            return await _reload(req.bundle if req else None)
        except Exception as exc:
            raise error_for(exc) from None

    return app


async def _sse(chunks: Iterator[dict[str, Any]], holder: ServiceHolder, svc: Any) -> AsyncIterator[str]:
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
        holder.release(svc)
    yield "data: [DONE]\n\n"
