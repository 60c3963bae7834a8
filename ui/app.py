"""The Gradio chat app: streamed answers, item cards with like / dislike, an editable history.

`build_app(config)` returns the `gr.Blocks`; `launch(config)` serves it. The page talks only to a
chatrec endpoint (through `ui.client.ChatrecClient`); catalog search reads the bundle's catalog
when the UI knows the bundle, else the server's `GET /v1/items`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatrec.errors import ChatrecError, ConfigError
from ui.catalog import ItemSource, LocalCatalog, RemoteCatalog
from ui.client import ChatrecClient, ChatRequestOptions
from ui.render import (
    card_html,
    chat_display,
    conversation_for_server,
    make_cards,
    split_reasoning,
    status_html,
    understood_line,
)

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("chatrec.ui")

ACTIONS = ("like", "watch", "dislike")

CSS = """
.chatrec-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px; }
.chatrec-card-title { font-weight: 600; font-size: 1.05em; }
.chatrec-card-meta { color: var(--body-text-color-subdued); font-size: 0.9em; }
.chatrec-card-reason { margin-top: 4px; }
.chatrec-score { color: var(--body-text-color-subdued); font-size: 0.8em; }
.chatrec-status { padding: 6px 10px; border-radius: 6px; }
.chatrec-status-error { background: #fde8e8; color: #8a1c1c; border: 1px solid #f5b5b5; }
.chatrec-status-ok { background: #e7f6ec; color: #1d5c33; }
.chatrec-status-info { background: #eef2fb; color: #233a6b; }
"""


@dataclass
class UIConfig:
    """Settings of `chatrec ui`."""

    endpoint: str = field(metadata={"help": "Base URL of a chatrec server, e.g. http://127.0.0.1:8000."})
    api_key: str | None = field(default=None, metadata={"help": "API key the server expects (Bearer token)."})
    bundle: str | None = field(default=None, metadata={
        "help": "Bundle whose catalog.parquet backs catalog search and card metadata (else the server's /v1/items)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface the UI binds to (loopback by default)."})
    port: int = field(default=7860, metadata={"help": "Port of the UI."})
    user_id: str = field(default="ui-user", metadata={"help": "User id that feedback is recorded under."})
    k: int = field(default=5, metadata={"help": "Number of items to recommend per answer."})
    max_tokens: int = field(default=256, metadata={"help": "Longest answer in tokens."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds to wait for the server per request."})
    auth: str | None = field(default=None, metadata={
        "help": "USER:PASSWORD a visitor must log in with (also CHATREC_UI_AUTH); required on a non-loopback "
                "--host, since the page acts with the server's API key."})
    insecure: bool = field(default=False, metadata={"help": "Allow a non-loopback --host without --auth."})

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"`endpoint` must be an http(s) URL, got {self.endpoint!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"`port` must be in 0..65535, got {self.port}")
        if self.k < 1:
            raise ConfigError(f"`k` should be positive, got {self.k}")
        if self.max_tokens < 1:
            raise ConfigError(f"`max_tokens` should be positive, got {self.max_tokens}")
        if self.timeout <= 0:
            raise ConfigError(f"`timeout` should be positive, got {self.timeout}")
        if not self.user_id.strip():
            raise ConfigError("`user_id` must not be empty")
        if self.auth is not None and (":" not in self.auth or not all(self.auth.split(":", 1))):
            raise ConfigError("`auth` must be USER:PASSWORD, both non-empty")
        from serve.service import is_loopback

        if not is_loopback(self.host) and not self.auth and not self.insecure:
            raise ConfigError(f"refusing to serve the UI on {self.host} (not loopback) without a login: anyone who "
                              "reaches it would use the server's API key. Pass --auth-file FILE (USER:PASSWORD) or "
                              "set CHATREC_UI_AUTH, or --insecure if this network is trusted")


def _plain_error(exc: BaseException) -> str:
    """What the page says about a failure: the message of our errors, a short generic line otherwise."""
    if isinstance(exc, ChatrecError):
        return " ".join(str(exc).split())
    log.exception("unexpected error in the UI")
    return f"something went wrong in the UI ({exc.__class__.__name__}); the UI's console has the details"


class ChatSession:
    """The app's behaviour, independent of the widgets: every handler is a method over plain values."""

    def __init__(self, config: UIConfig, client: ChatrecClient | None = None, catalog: ItemSource | None = None):
        self.config = config
        self.client = client or ChatrecClient(config.endpoint, config.api_key, timeout=config.timeout)
        if catalog is None:
            catalog = LocalCatalog.from_bundle(config.bundle) if config.bundle else RemoteCatalog(self.client)
        self.catalog = catalog

    # status ----------------------------------------------------------------------------------------
    def check(self) -> str:
        """Banner for page load: which server, or why it cannot be used."""
        try:
            self.client.health()
            model = self.client.model()
        except Exception as exc:
            return status_html(_plain_error(exc), kind="error")
        return status_html(f"Connected to {self.client.endpoint} (model {model}).", kind="ok")

    # chat ------------------------------------------------------------------------------------------
    def respond(self, request: str, turns: list[dict[str, Any]], history: list[dict[str, Any]],
                exclude_seen: bool, show_reasoning: bool, user_id: str,
                ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]], str, list[dict[str, Any]], str]]:
        """Stream one answer. Yields (chatbot messages, turns, input box, cards, status)."""
        request = (request or "").strip()
        if not request:
            yield chat_display(turns, show_reasoning=show_reasoning), turns, "", [], status_html(
                "Type a request first.", kind="info")
            return
        messages = conversation_for_server(turns, request)
        turn: dict[str, Any] = {"user": request, "raw": ""}
        turns = [*turns, turn]
        options = ChatRequestOptions(
            history=[{"item_id": h["item_id"], "action": h["action"]} for h in history],
            exclude_seen=exclude_seen, user_id=user_id or self.config.user_id,
            max_tokens=self.config.max_tokens,
        )
        yield chat_display(turns, show_reasoning=show_reasoning), turns, "", [], status_html("Thinking…")
        items: list[dict[str, Any]] | None = None
        try:
            for delta in self.client.stream_chat(messages, options):
                if delta.items is not None:
                    items = delta.items
                if delta.linked is not None:
                    turn["linked"] = delta.linked
                if delta.extra is not None:
                    turn["chatrec"] = delta.extra
                if delta.text:
                    turn["raw"] += delta.text
                    yield chat_display(turns, show_reasoning=show_reasoning), turns, "", [], status_html("Answering…")
        except Exception as exc:  # every failure becomes one plain line on the page
            msg = _plain_error(exc)
            turn.pop("raw", None)
            turn["error"] = msg
            yield chat_display(turns, show_reasoning=show_reasoning), turns, "", [], status_html(msg, kind="error")
            return
        answer = split_reasoning(turn["raw"])[1]
        items = (items or [])[: self.config.k]
        note = f"{len(items)} recommendation{'s' if len(items) != 1 else ''} from the answer."
        served = (turn.get("chatrec") or {}).get("turn")
        if served not in (None, "model", "recommendation"):  # a question, "why?", small talk: answered in words
            understood = understood_line(turn.get("chatrec"))
            yield chat_display(turns, show_reasoning=show_reasoning), turns, "", [], status_html(
                understood or "Answered.", kind="ok")
            return
        if not items:
            # the answer named no item: show the structured top-K for the same request and history
            try:
                items = self.client.recommend(options.history, k=self.config.k, request=request,
                                              exclude_seen=exclude_seen)
            except Exception as exc:
                yield chat_display(turns, show_reasoning=show_reasoning), turns, "", [], status_html(
                    f"The answer named no items, and top-K failed: {_plain_error(exc)}", kind="error")
                return
            items = [{**it, "reason": f"Top pick #{n} for your history and request (top-K retrieval)"}
                     for n, it in enumerate(items, start=1)]
            note = f"The answer named no items; {len(items)} recommendation{'s' if len(items) != 1 else ''} " \
                   "from top-K retrieval."
        try:
            rows = self.catalog.rows([str(i.get("item_id")) for i in items])
        except ChatrecError:
            rows = {}
        cards = [card.__dict__ for card in make_cards(items, answer, rows)]
        linked = [x for x in turn.get("linked") or [] if x.get("action") in ("like", "dislike")]
        understood = understood_line(turn.get("chatrec"))
        if understood:
            note += " " + understood
        if linked:
            note += " Added to your history: " + ", ".join(f"{x['title']} [{x['action']}]" for x in linked) + "."
        yield chat_display(turns, show_reasoning=show_reasoning), turns, "", cards, status_html(note, kind="ok")

    @staticmethod
    def absorb_linked(turns: list[dict[str, Any]], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Titles the server linked in the last message ("I loved X") join the history with their action."""
        linked = (turns[-1].get("linked") if turns else None) or []
        for x in linked:
            if x.get("action") in ("like", "dislike") and x.get("item_id"):
                history = [h for h in history if h["item_id"] != str(x["item_id"])]
                history.append({"item_id": str(x["item_id"]), "title": str(x.get("title", x["item_id"])),
                                "action": str(x["action"])})
        return history

    def redisplay(self, turns: list[dict[str, Any]], show_reasoning: bool) -> list[dict[str, Any]]:
        return chat_display(turns, show_reasoning=show_reasoning)

    # feedback --------------------------------------------------------------------------------------
    def feedback(self, card: dict[str, Any], action: str, user_id: str, history: list[dict[str, Any]],
                 ) -> tuple[str, list[dict[str, Any]]]:
        """POST the feedback and add the item to the history. Returns (status, history)."""
        try:
            self.client.feedback(user_id or self.config.user_id, str(card["item_id"]), action,
                                 context={"source": "ui", "rank": card.get("rank")})
        except Exception as exc:
            return status_html(f"Feedback not recorded: {_plain_error(exc)}", kind="error"), history
        history = [h for h in history if h["item_id"] != card["item_id"]]
        history.append({"item_id": str(card["item_id"]), "title": str(card["title"]), "action": action})
        return status_html(f"Recorded {action} for {card['title']}.", kind="ok"), history

    # history ---------------------------------------------------------------------------------------
    def search(self, query: str) -> tuple[list[tuple[str, str]], str]:
        """Catalog matches as dropdown choices (label, item_id), and a status line."""
        try:
            rows = self.catalog.search(query or "", limit=20)
        except Exception as exc:
            return [], status_html(_plain_error(exc), kind="error")
        if not (query or "").strip():
            return [], ""
        return [(str(r.get("title")), str(r.get("item_id"))) for r in rows], status_html(
            f"{len(rows)} match{'es' if len(rows) != 1 else ''} for “{query.strip()}”.", kind="info")

    @staticmethod
    def add_to_history(item_id: str | None, choices: list[tuple[str, str]], action: str,
                       history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not item_id:
            return history
        titles = dict((v, k) for k, v in choices)
        history = [h for h in history if h["item_id"] != item_id]
        return [*history, {"item_id": item_id, "title": titles.get(item_id, item_id), "action": action}]

    @staticmethod
    def keep_history(selected: list[str] | None, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop the history entries the user removed from the multiselect."""
        keep = set(selected or [])
        return [h for h in history if h["item_id"] in keep]


def _history_widget_update(history: list[dict[str, Any]]) -> Any:
    import gradio as gr

    choices = [(f"{h['title']} [{h['action']}]", h["item_id"]) for h in history]
    return gr.update(choices=choices, value=[h["item_id"] for h in history])


def build_app(config: UIConfig, session: ChatSession | None = None) -> gr.Blocks:
    """The page: chat on the left with item cards under it, history and settings on the right."""
    import gradio as gr

    session = session or ChatSession(config)
    with gr.Blocks(title="chatrec", analytics_enabled=False) as demo:
        turns = gr.State([])
        cards = gr.State([])
        history = gr.State([])
        gr.Markdown(f"## chatrec\nAsk for recommendations in plain words. Server: `{session.client.endpoint}`")
        status = gr.HTML(status_html("Connecting…"), elem_id="chatrec-status")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=380, elem_id="chatrec-chat",
                                     feedback_options=None, buttons=["copy"])
                with gr.Row():
                    request = gr.Textbox(show_label=False, placeholder="e.g. something like the last one I loved, from the 80s",
                                         elem_id="chatrec-input", scale=5, autofocus=True)
                    send = gr.Button("Send", variant="primary", elem_id="chatrec-send", scale=1, min_width=80)
                with gr.Row():
                    exclude_seen = gr.Checkbox(value=True, label="Exclude what I have seen",
                                               elem_id="chatrec-exclude-seen")
                    show_reasoning = gr.Checkbox(value=False, label="Show reasoning", elem_id="chatrec-show-reasoning")
                gr.Markdown("### Recommended items")

                @gr.render(inputs=[cards])
                def _render_cards(card_list: list[dict[str, Any]]) -> None:
                    if not card_list:
                        gr.Markdown("_No recommendations yet._", elem_classes=["chatrec-no-cards"])
                        return
                    for card in card_list:
                        from ui.render import ItemCard

                        with gr.Group(elem_classes=["chatrec-card-group"]):
                            gr.HTML(card_html(ItemCard(**card)))
                            with gr.Row():
                                like = gr.Button("Like", size="sm", elem_classes=["chatrec-like"])
                                dislike = gr.Button("Dislike", size="sm", elem_classes=["chatrec-dislike"])
                        for button, action in ((like, "like"), (dislike, "dislike")):
                            button.click(
                                lambda uid, hist, card=card, action=action: _feedback_outputs(
                                    session.feedback(card, action, uid, hist), action),
                                inputs=[user_id, history], outputs=[status, history, history_box, like, dislike],
                            )

            with gr.Column(scale=2):
                gr.Markdown("### Your history")
                user_id = gr.Textbox(value=config.user_id, label="User id", elem_id="chatrec-user")
                search = gr.Textbox(label="Search the catalog", placeholder="title…", elem_id="chatrec-search")
                matches = gr.Radio(choices=[], value=None, label="Matches (pick one)", interactive=True,
                                   elem_id="chatrec-matches")
                match_choices = gr.State([])
                with gr.Row():
                    action = gr.Radio(list(ACTIONS), value="like", label="Reaction", elem_id="chatrec-action")
                    add = gr.Button("Add to history", elem_id="chatrec-add", min_width=80)
                history_box = gr.Dropdown(choices=[], value=[], multiselect=True, interactive=True,
                                          label="History (oldest first; × removes)", elem_id="chatrec-history")
                clear = gr.Button("Clear history", size="sm", elem_id="chatrec-clear")

        def _feedback_outputs(result: tuple[str, list[dict[str, Any]]], action: str,
                              ) -> tuple[str, list[dict[str, Any]], Any, Any, Any]:
            """After a click: banner, history, and the pair of buttons showing what was recorded."""
            banner, hist = result
            recorded = "chatrec-status-ok" in banner
            like = gr.update(value="Liked" if recorded and action == "like" else "Like")
            dislike = gr.update(value="Disliked" if recorded and action == "dislike" else "Dislike")
            return banner, hist, _history_widget_update(hist), like, dislike

        def _search(query: str) -> tuple[Any, list[tuple[str, str]], str]:
            choices, banner = session.search(query)
            return gr.update(choices=choices, value=None), choices, banner

        def _add(item_id: str | None, choices: list[tuple[str, str]], act: str,
                 hist: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
            hist = session.add_to_history(item_id, [tuple(c) for c in choices], act, hist)  # type: ignore[misc]
            return hist, _history_widget_update(hist)

        def _keep(selected: list[str] | None, hist: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return session.keep_history(selected, hist)

        chat_outputs = [chatbot, turns, request, cards, status]
        chat_inputs = [request, turns, history, exclude_seen, show_reasoning, user_id]
        def _absorb(turn_list: list[dict[str, Any]], hist: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
            hist = session.absorb_linked(turn_list, hist)
            return hist, _history_widget_update(hist)

        request.submit(session.respond, chat_inputs, chat_outputs).then(_absorb, [turns, history], [history, history_box])
        send.click(session.respond, chat_inputs, chat_outputs).then(_absorb, [turns, history], [history, history_box])
        show_reasoning.change(session.redisplay, [turns, show_reasoning], [chatbot])
        search.submit(_search, [search], [matches, match_choices, status])
        search.input(_search, [search], [matches, match_choices, status], trigger_mode="always_last")
        add.click(_add, [matches, match_choices, action, history], [history, history_box])
        history_box.input(_keep, [history_box, history], [history])
        clear.click(lambda: ([], gr.update(choices=[], value=[])), None, [history, history_box])
        demo.load(session.check, None, [status])
    return demo


def launch(config: UIConfig, *, block: bool = True) -> gr.Blocks:
    """Serve the app on `config.host:config.port` (no share links, no analytics).

    With `block`, waits until Ctrl-C or SIGTERM and closes the server; both end the call normally,
    so a caller's `with LocalServer(...)` still stops its server.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from chatrec.deps import require

    require("gradio", "the chat UI")
    demo = build_app(config)
    demo.queue(default_concurrency_limit=4)
    auth = None
    if config.auth:
        user, _, password = config.auth.partition(":")
        auth = (user, password)
    demo.launch(server_name=config.host, server_port=config.port, share=False, inbrowser=False,
                prevent_thread_lock=True, show_error=False, ssr_mode=False, quiet=True,
                css=CSS, footer_links=[], auth=auth)
    if block:
        _wait_until_stopped(demo)
    return demo


def _wait_until_stopped(demo: gr.Blocks) -> None:
    import signal
    import threading
    import time

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
