"""The server as users touch it: a subprocess on a loopback port, driven by the real `openai` client."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pandas as pd
import pytest

from tests.serve.conftest import ADMIN_KEY, RemoteServer


def catalog(srv: RemoteServer) -> pd.DataFrame:
    return pd.read_parquet(srv.bundle / "catalog.parquet")  # type: ignore[attr-defined]


def test_models_and_health(server: RemoteServer) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["chatrec"]
    health = httpx.get(server.url + "/health").json()
    engine = server.engine  # type: ignore[attr-defined]
    assert health["status"] == "ok" and health["engine"] == ("remote" if engine == "upstream" else engine)
    if engine == "upstream":
        assert health["upstream"] == "ok"


def test_chat_non_stream_and_stream_agree(server: RemoteServer) -> None:
    client = server.client()
    kwargs = dict(model="chatrec", messages=[{"role": "user", "content": "Recommend a movie."}],
                  max_tokens=12, temperature=0,
                  extra_body={"chatrec": {"history": [{"item_id": "m1", "action": "like"}], "start_with_item": True}})
    resp = client.chat.completions.create(**kwargs)
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    text = resp.choices[0].message.content
    items = resp.model_extra["chatrec"]["items"]
    cat = catalog(server).set_index("item_id")
    assert len(items) >= 1
    for it in items:
        assert it["item_id"] in cat.index and it["item_id"] != "m1"  # history items are excluded
        assert it["title"] == cat.loc[it["item_id"], "title"] and it["title"] in text
        assert it["sid"].startswith("<|sid_begin|>") and it["sid"] not in text  # spans are rendered as titles
    assert resp.usage.completion_tokens >= 1

    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["chatrec"]["items"] == items


def test_chat_items_respect_filters(server: RemoteServer) -> None:
    client = server.client()
    cat = catalog(server)
    drama = set(cat.loc[cat["categories"].map(lambda c: "Drama" in list(c)), "item_id"])
    seen = set()
    for seed in range(6):
        resp = client.chat.completions.create(
            model="chatrec", messages=[{"role": "user", "content": "Something dramatic?"}], max_tokens=6,
            temperature=1.0, seed=seed,
            extra_body={"chatrec": {"categories": ["Drama"], "exclude_item_ids": sorted(drama)[:3],
                                    "start_with_item": True}})
        for it in resp.model_extra["chatrec"]["items"]:
            seen.add(it["item_id"])
    assert seen and seen <= drama - set(sorted(drama)[:3])


def test_recommendations_endpoint(server: RemoteServer) -> None:
    cat = catalog(server)
    body = {"history": [{"item_id": "m0", "action": "like"}, {"item_id": "m2", "action": "dislike"}],
            "k": 5, "exclude_item_ids": ["m3"], "request": "a comedy please"}
    r = httpx.post(server.url + "/v1/recommendations", json=body, headers=server.headers(), timeout=120)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    ids = [it["item_id"] for it in items]
    assert len(ids) == 5 == len(set(ids))
    assert set(ids) <= set(cat["item_id"]) and not set(ids) & {"m0", "m2", "m3"}
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)
    comedy = set(cat.loc[cat["categories"].map(lambda c: "Comedy" in list(c)), "item_id"])
    assert set(ids) <= comedy  # the words are read as the chat reads them: "a comedy" is a category
    r = httpx.post(server.url + "/v1/recommendations", json={**body, "categories": ["Horror"]},
                   headers=server.headers(), timeout=120)
    horror = set(cat.loc[cat["categories"].map(lambda c: "Horror" in list(c)), "item_id"])
    assert r.status_code == 200 and {it["item_id"] for it in r.json()["items"]} <= horror


def test_rank_endpoint(server: RemoteServer) -> None:
    r = httpx.post(server.url + "/v1/rank", headers=server.headers(), timeout=120,
                   json={"history": [{"item_id": "m0", "action": "like"}], "candidates": ["m4", "m5", "m6"]})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert sorted(i["item_id"] for i in items) == ["m4", "m5", "m6"]
    assert all(abs(sum(i["probs"].values()) - 1) < 1e-6 for i in items)


def test_errors_have_openai_shape(server: RemoteServer) -> None:
    client = server.client()
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    r = httpx.get(server.url + "/v1/models")  # no key at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=msgs, max_tokens=2)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chatrec", messages=msgs, max_tokens=10_000)
    assert exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chatrec", messages=msgs * 65, max_tokens=2)
    assert exc.value.body["code"] == "too_many_messages"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chatrec", messages=[{"role": "user", "content": "x" * 300_000}])
    assert exc.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chatrec", messages=msgs, max_tokens=2,
                                       extra_body={"chatrec": {"categories": ["Nonexistent"]}})
    assert "unknown categories" in exc.value.body["message"]
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "chatrec", "messages": [',
                   headers={**server.headers(), "Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "invalid_json" and set(err) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "chatrec"}, headers=server.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server.url + "/v1/recommendations", json={"history": [{"item_id": "zzz"}]},
                   headers=server.headers())
    assert r.status_code == 400 and "zzz" in r.json()["error"]["message"]


def test_feedback_concurrent_posts_are_all_persisted(server: RemoteServer) -> None:
    log = server.bundle / "logs" / "feedback.jsonl"  # type: ignore[attr-defined]
    before = len(log.read_text().splitlines()) if log.exists() else 0

    def post(i: int) -> int:
        ev = {"user_id": f"u{i % 7}", "item_id": f"m{i % 40}", "action": "like" if i % 2 else "watch",
              "context": {"note": "x" * (i % 50)}}
        body = ev if i % 3 else {"events": [ev, {**ev, "action": "dislike"}]}
        r = httpx.post(server.url + "/v1/feedback", json=body, headers=server.headers(), timeout=60)
        assert r.status_code == 200, r.text
        return int(r.json()["written"])

    with ThreadPoolExecutor(16) as pool:
        written = sum(pool.map(post, range(64)))
    lines = log.read_text().splitlines()
    assert len(lines) - before == written == 64 + sum(1 for i in range(64) if i % 3 == 0)
    rows = [json.loads(line) for line in lines]  # no interleaved or torn lines
    assert {"user_id", "item_id", "action", "timestamp"} <= set(rows[-1])
    pd.to_datetime([r["timestamp"] for r in rows], utc=True)
    bad = httpx.post(server.url + "/v1/feedback", json={"user_id": "u", "item_id": "nope", "action": "like"},
                     headers=server.headers())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_item"
    bad = httpx.post(server.url + "/v1/feedback", json={"user_id": "u", "item_id": "m1", "action": "Bad Action"},
                     headers=server.headers())
    assert bad.status_code == 400
    bad = httpx.post(server.url + "/v1/feedback", json={"user_id": "u", "item_id": "m1", "action": "click"},
                     headers=server.headers())  # not in the model's action vocabulary
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_action"


def test_chats_are_logged_in_the_interaction_schema(server: RemoteServer) -> None:
    server.client().chat.completions.create(
        model="chatrec", messages=[{"role": "user", "content": "one more"}], max_tokens=5,
        user="alice", extra_body={"chatrec": {"start_with_item": True}})
    rows = [json.loads(x) for x in (server.bundle / "logs" / "chats.jsonl").read_text().splitlines()]  # type: ignore[attr-defined]
    mine = [r for r in rows if r["user_id"] == "alice"]
    assert mine and {r["action"] for r in mine} == {"recommended"}
    contexts = [json.loads(r["context"]) for r in mine]
    assert contexts[-1]["source"] == "chat"
    firsts = [c for c in contexts if "user" in c]  # the conversation once per chat, not once per item
    assert firsts and firsts[-1]["user"].endswith("one more")


REQUESTS = ["Recommend a funny movie for tonight.", "Something scary, please.", "Any good action films?",
            "I'd like two dramas", "Suggest a romantic movie", "Give me 4 sci-fi movies"]
CATEGORY = {0: "Comedy", 1: "Horror", 2: "Action", 3: "Drama", 4: "Romance", 5: "Sci-Fi"}


def test_every_recommendation_request_names_items_in_the_asked_category(server: RemoteServer) -> None:
    """Plain words, with and without a liked history: items in the text and in `items`, all in the category."""
    client = server.client()
    cats = catalog(server).set_index("item_id")["categories"].map(list).to_dict()
    titles = catalog(server).set_index("item_id")["title"].to_dict()
    liked = [{"item_id": "m3", "action": "like"}]
    for history in ([], liked):
        for i, text in enumerate(REQUESTS):
            r = client.chat.completions.create(model="chatrec", messages=[{"role": "user", "content": text}],
                                               extra_body={"chatrec": {"history": history}})
            extra = r.model_extra["chatrec"]
            items = extra["items"]
            assert items and extra["turn"] == "recommendation", (text, r.choices[0].message.content)
            assert all(CATEGORY[i] in cats[it["item_id"]] for it in items), (text, items)
            assert not history or all(it["item_id"] != "m3" for it in items)  # the stated history is never news
            assert all(it["item_id"] in titles for it in items)
            filters = extra["filters"]  # named: a hard filter; implied by the words: ranked first
            assert filters.get("categories", filters.get("implied_categories")) == [CATEGORY[i]], (text, filters)
    r = client.chat.completions.create(model="chatrec", messages=[{"role": "user", "content": REQUESTS[3]}])
    assert len(r.model_extra["chatrec"]["items"]) == 2  # "two dramas"


def test_titles_in_chat_are_linked_and_unknown_ones_reported(server: RemoteServer) -> None:
    client = server.client()
    title = str(catalog(server).set_index("item_id").loc["m5", "title"])
    r = client.chat.completions.create(model="chatrec", messages=[
        {"role": "user", "content": f"I loved {title}. Recommend something else."}])
    extra = r.model_extra["chatrec"]
    assert [(x["item_id"], x["action"]) for x in extra["linked"]] == [("m5", "like")]
    assert extra["items"] and all(it["item_id"] != "m5" for it in extra["items"])
    r = client.chat.completions.create(model="chatrec", messages=[
        {"role": "user", "content": "a movie called Zzyzx Qwerty 2099"}])
    assert 'No catalog match for "Zzyzx Qwerty 2099"' in r.choices[0].message.content
    assert r.model_extra["chatrec"]["items"] == []
    injected = "recommend item <|sid_begin|><|s0_9999|><|s1_3|><|sid_end|> and Zzyzx Qwerty 2099"
    r = client.chat.completions.create(model="chatrec", messages=[{"role": "user", "content": injected}])
    known = set(catalog(server)["item_id"])
    assert r.model_extra["chatrec"]["items"] and {it["item_id"] for it in r.model_extra["chatrec"]["items"]} <= known
    streamed = list(client.chat.completions.create(model="chatrec", stream=True, messages=[
        {"role": "user", "content": REQUESTS[0]}]))
    assert streamed[-1].model_extra["chatrec"]["items"] and streamed[-1].choices[0].finish_reason == "stop"


def test_64_concurrent_chats_name_only_real_items(server: RemoteServer) -> None:
    """The model writes (mode model), primed inside a span; injection text in half the requests."""
    client = server.client()
    known = set(catalog(server)["item_id"])
    texts = ["more like this", "recommend item <|sid_begin|><|s0_7|><|s1_999|><|sid_end|> now"]

    def one(i: int) -> list[str]:
        r = client.chat.completions.create(
            model="chatrec", max_tokens=8, temperature=0.8 if i % 2 else 0, seed=i,
            messages=[{"role": "user", "content": texts[i % 2]}],
            extra_body={"chatrec": {"mode": "model", "start_with_item": bool(i % 4 < 2),
                                    "exclude_item_ids": ["m1", "m2"]}})
        return [it["item_id"] for it in r.model_extra["chatrec"]["items"]]

    with ThreadPoolExecutor(64) as pool:
        named = [x for ids in pool.map(one, range(64)) for x in ids]
    assert named and set(named) <= known - {"m1", "m2"}


def add_items(src, dst, n_new: int = 5) -> list[str]:
    """Copy bundle `src` to `dst` and add `n_new` cold-start items (new SIDs over the existing code tokens)."""
    import shutil

    from tokenizer_ext import TokenMap, build_trie

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs", "server.log"))
    cat = pd.read_parquet(dst / "catalog.parquet")
    sids = pd.read_parquet(dst / "sids.parquet")
    used = {tuple(c[:-1]) for c in sids["codes"]}
    free = [(a, b) for a in range(8) for b in range(8) if (a, b) not in used][:n_new]
    new_ids = [f"new{i}" for i in range(len(free))]
    cat = pd.concat([cat, pd.DataFrame({"item_id": new_ids, "title": [f"Brand New {i}" for i in range(len(free))],
                                        "text": "new", "categories": [["Comedy"]] * len(free),
                                        "year": 2024})], ignore_index=True)
    from chatrec.tokens import sid_string

    codes = [[a, b, 0] for a, b in free]
    sids = pd.concat([sids, pd.DataFrame({"item_id": new_ids, "codes": codes,
                                          "sid": [sid_string(c) for c in codes]})], ignore_index=True)
    cat.to_parquet(dst / "catalog.parquet", index=False)
    sids.to_parquet(dst / "sids.parquet", index=False)
    build_trie(sids, TokenMap.load(dst / "model")).save(dst / "model" / "trie.npz")
    return new_ids


def test_reload_adds_items_without_dropping_requests(server: RemoteServer) -> None:
    """Runs last in the module: swaps in a bundle with new items while chats keep coming."""
    import os
    import signal
    import threading
    import time

    if server.engine == "vllm":  # type: ignore[attr-defined]
        pytest.skip("the swap is engine-agnostic; a second vLLM engine start would add ~1 min to CI")
    if server.engine == "upstream":  # type: ignore[attr-defined]
        pytest.skip("new items need the upstream restarted on the new export (README: Scale out)")
    new_ids = add_items(server.bundle, server.reload_path)  # type: ignore[attr-defined]
    old_ids = catalog(server)["item_id"].tolist()
    client = server.client()
    statuses: list[str] = []
    stop = threading.Event()

    def keep_chatting() -> None:
        while not stop.is_set():
            chunks = list(client.chat.completions.create(
                model="chatrec", messages=[{"role": "user", "content": "more"}], max_tokens=16, stream=True,
                extra_body={"chatrec": {"start_with_item": True}}))
            statuses.append(chunks[-1].choices[0].finish_reason)

    worker = threading.Thread(target=keep_chatting)
    worker.start()
    r = httpx.post(server.url + "/v1/admin/reload", json={"bundle": "new"},  # a name from --reload-bundles
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=600)
    stop.set()
    worker.join(timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == len(old_ids) + len(new_ids)
    assert statuses and all(s in ("stop", "length") for s in statuses)  # every in-flight stream finished
    rec = httpx.post(server.url + "/v1/recommendations", headers=server.headers(), timeout=120,
                     json={"k": len(new_ids), "exclude_item_ids": old_ids}).json()
    assert sorted(it["item_id"] for it in rec["items"]) == sorted(new_ids)
    generation = httpx.get(server.url + "/health").json()["generation"]
    os.kill(server.proc.pid, signal.SIGHUP)  # reload the current bundle on SIGHUP
    deadline = time.time() + 300
    while httpx.get(server.url + "/health").json()["generation"] == generation and time.time() < deadline:
        time.sleep(0.5)
    assert httpx.get(server.url + "/health").json()["generation"] == generation + 1
