"""The client and the app's handlers against a real closed port, the local catalog, config validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from chatrec.errors import BundleError, ConfigError, DataError
from tests.conftest import make_catalog
from ui.app import ChatSession, UIConfig
from ui.catalog import LocalCatalog, NoCatalog
from ui.client import ChatrecClient, ChatRequestOptions, EndpointError
from ui.local_server import free_port


@pytest.fixture
def down_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def catalog() -> LocalCatalog:
    frame = make_catalog(30)
    frame.loc[0, "title"] = "Alien (1979)"
    frame.loc[1, "title"] = "Aliens (1986)"
    frame.loc[2, "title"] = "The Alien Factor (1978)"
    frame.loc[3, "title"] = "Salient Points (1990)"
    return LocalCatalog(frame)


def test_client_says_plainly_when_the_endpoint_is_down(down_url: str) -> None:
    client = ChatrecClient(down_url, timeout=5)
    for call in (client.health, client.model, lambda: client.feedback("u", "m1", "like"),
                 lambda: client.recommend([], k=3), lambda: client.search_items("x"),
                 lambda: list(client.stream_chat([{"role": "user", "content": "hi"}]))):
        with pytest.raises(EndpointError, match=f"cannot reach the chatrec server at {down_url}"):
            call()


def test_client_normalises_the_endpoint() -> None:
    assert ChatrecClient("http://h:1/v1/").endpoint == "http://h:1"
    extra = ChatrecClient("http://h:1").chat_extra_body(
        ChatRequestOptions(history=[{"item_id": "m1", "action": "like"}], exclude_seen=False, user_id="u1"))
    assert extra == {"chatrec": {"history": [{"item_id": "m1", "action": "like"}], "exclude_history": False,
                                 "user_id": "u1"}}


@pytest.mark.parametrize(
    ("status", "body", "text", "expected"),
    [(401, {"error": {"message": "invalid API key", "type": "authentication_error"}}, "",
      "the chatrec server refused the API key (401): invalid API key"),
     (400, {"error": {"message": "unknown item id 'x'\n in the history"}}, "",
      "the chatrec server rejected the request (400): unknown item id 'x' in the history"),
     (422, {"detail": "bad body"}, "", "the chatrec server rejected the request (422): bad body"),
     (404, None, "Not Found", "the chatrec server at http://h:1 has no such endpoint (404): Not Found"),
     (502, None, "<html>" + "x" * 1000, "the chatrec server failed (502): <html>x")],
)
def test_http_errors_become_one_plain_line(status: int, body: object, text: str, expected: str) -> None:
    err = ChatrecClient("http://h:1")._status_error(status, body, text)
    assert isinstance(err, EndpointError) and err.status == status
    assert str(err).startswith(expected)
    assert "\n" not in str(err) and len(str(err)) < 400


def test_session_shows_a_plain_error_when_the_endpoint_is_down(down_url: str, catalog: LocalCatalog) -> None:
    session = ChatSession(UIConfig(endpoint=down_url, timeout=5), catalog=catalog)
    assert "cannot reach the chatrec server" in session.check()
    steps = list(session.respond("something funny", [], [], True, False, "u1"))
    chat, turns, box, cards, status = steps[-1]
    assert box == "" and cards == []
    assert turns == [{"user": "something funny", "error": f"cannot reach the chatrec server at {down_url}; "
                      "is `chatrec serve` running there?"}]
    assert chat[-1]["content"].startswith("Error: cannot reach the chatrec server")
    assert "chatrec-status-error" in status and "Traceback" not in status
    banner, history = session.feedback({"item_id": "m1", "title": "Heat", "rank": 1}, "like", "u1", [])
    assert "Feedback not recorded" in banner and history == []


def test_session_history_editing(down_url: str, catalog: LocalCatalog) -> None:
    session = ChatSession(UIConfig(endpoint=down_url), catalog=catalog)
    choices, banner = session.search("alien")
    assert [c[0] for c in choices] == ["Alien (1979)", "Aliens (1986)", "The Alien Factor (1978)",
                                       "Salient Points (1990)"]
    assert "4 matches" in banner
    hist = session.add_to_history("m1", choices, "like", [])
    hist = session.add_to_history("m0", choices, "dislike", hist)
    hist = session.add_to_history("m1", choices, "watch", hist)  # re-adding moves it to the end
    assert hist == [{"item_id": "m0", "title": "Alien (1979)", "action": "dislike"},
                    {"item_id": "m1", "title": "Aliens (1986)", "action": "watch"}]
    assert session.keep_history(["m1"], hist) == hist[1:]
    assert session.search("   ") == ([], "")


def test_empty_request_is_not_sent(down_url: str, catalog: LocalCatalog) -> None:
    session = ChatSession(UIConfig(endpoint=down_url), catalog=catalog)
    (_, turns, _, _, status), = list(session.respond("  ", [], [], True, False, "u"))
    assert turns == [] and "Type a request first" in status


def test_local_catalog(tmp_path: Path, catalog: LocalCatalog) -> None:
    assert catalog.search("") == []
    assert catalog.search("ALIEN", limit=2)[0]["title"] == "Alien (1979)"
    row = catalog.rows(["m0", "missing"])
    assert list(row) == ["m0"] and "text" not in row["m0"] and isinstance(row["m0"]["categories"], list)
    with pytest.raises(BundleError, match="chatrec data import"):
        LocalCatalog.from_bundle(tmp_path)
    make_catalog(5).to_parquet(tmp_path / "catalog.parquet")
    assert len(LocalCatalog.from_bundle(tmp_path)) == 5
    with pytest.raises(DataError, match="no `title` column"):
        LocalCatalog(pd.DataFrame({"item_id": ["a"]}))
    with pytest.raises(DataError, match="--bundle"):
        NoCatalog().search("x")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"endpoint": "localhost:8000"}, "`endpoint` must be an http"),
     ({"port": 70000}, "`port` must be in 0..65535, got 70000"),
     ({"k": 0}, "`k` should be positive, got 0"),
     ({"user_id": " "}, "`user_id` must not be empty")],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UIConfig(**{"endpoint": "http://127.0.0.1:1", **kwargs})
