"""Start the HTTP server for a `ServeConfig` (used by `chatrec serve`)."""

from __future__ import annotations

import sys

from serve.service import ChatService, ServeConfig, ServiceHolder


def build_holder(config: ServeConfig) -> ServiceHolder:
    """Load the bundle's engine and wrap it for atomic reloads."""
    service = ChatService.build(config)
    return ServiceHolder(service, lambda bundle: ChatService.build(config, bundle))


def run(config: ServeConfig) -> None:
    import uvicorn

    from serve.app import create_app

    holder = build_holder(config)
    app = create_app(holder, config)
    auth = "API key required" if config.api_key else "no API key"
    print(f"chatrec serving {config.bundle} with {config.engine} on http://{config.host}:{config.port}/v1 "
          f"({auth})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)
