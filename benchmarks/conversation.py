"""Does chat understand? Single requests phrased many ways and scripted dialogues, against a real server.

For each catalog (MovieLens-100k from `--bundle`, and a synthetic bookshop built in code by
`chatrec.bookshop`, served with a tiny random model so that only the reading of the words can
get it right) the requests of `benchmarks/conversation_cases.py` go through the `openai` client
to `chatrec serve`, plain messages only. Per phrasing kind it prints: turns, turns naming items
(in `chatrec.items` and in the text), the share of returned items carrying the implied category
(for negations: free of the ruled-out one), bare-title answers, p50 latency. Then every scripted
dialogue with its check, obeyed or not. `parse` measures what reading the messages costs
(9 user messages of 2,000 characters) on ML-100k and on a 100k-title synthetic catalog.

    .venv/bin/python benchmarks/conversation.py --bundle BUNDLE [--engine transformers] [--only movies|books]
    .venv/bin/python benchmarks/conversation.py parse --bundle BUNDLE
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package
sys.path.insert(1, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"

from conversation_cases import DIALOGUES, SINGLE  # noqa: E402

from chatrec.chat import shown  # noqa: E402


class Catalog:
    """Item facts the checks need."""

    def __init__(self, frame: pd.DataFrame):
        frame = frame.set_index("item_id")
        self.cats = {str(k): set(map(str, v)) for k, v in frame["categories"].map(list).items()}
        self.title = {str(k): str(v) for k, v in frame["title"].items()}
        self.year = {str(k): (int(v) if pd.notna(v) else None)
                     for k, v in (frame["year"] if "year" in frame.columns else frame["title"] * 0).items()}
        self.by_title = {v: k for k, v in self.title.items()}
        self.shown_titles = {shown(t) for t in self.title.values()} | set(self.title.values())


def is_bare(content: str, catalog: Catalog) -> bool:
    """An answer that is nothing but a title (or a few words)."""
    text = content.strip().strip(".!").strip()
    return text in catalog.shown_titles or len(text.split()) < 4


def names_items(content: str, items: list[dict[str, Any]]) -> bool:
    return bool(items) and all(shown(it["title"]) in content for it in items)


def chat(client: Any, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any], float]:
    t0 = time.perf_counter()
    r = client.chat.completions.create(model="chatrec", messages=messages)
    return r.choices[0].message.content or "", r.model_extra["chatrec"], time.perf_counter() - t0


# dialogue checks: (answers [(content, extra)], catalog, argument) -> obeyed
def _items(extra: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in extra.get("items", [])]


def _carry(ids: Sequence[str], cat: str, c: Catalog) -> bool:
    return bool(ids) and all(cat in c.cats[i] for i in ids)


def different_same_category(a: list[Any], c: Catalog, cat: str) -> bool:
    prev, last = _items(a[-2][1]), _items(a[-1][1])
    return bool(last) and not set(prev) & set(last) and _carry(last, cat, c)


def years_and_category(a: list[Any], c: Catalog, arg: tuple[str, int, int]) -> bool:
    cat, lo, hi = arg
    last = _items(a[-1][1])
    return _carry(last, cat, c) and all(c.year[i] is not None and lo <= c.year[i] <= hi for i in last)  # type: ignore[operator]


def _years(ids: Sequence[str], c: Catalog) -> list[int]:
    return [y for y in (c.year[i] for i in ids) if y is not None]


def older_same_category(a: list[Any], c: Catalog, cat: str) -> bool:
    """Older than every item of the last list (or than its newest, when it held the category's oldest)."""
    prev, last = _years(_items(a[-2][1]), c), _items(a[-1][1])
    if not prev:
        return False
    older = [y for i, y in c.year.items() if y is not None and cat in c.cats[i]]
    bar = min(prev) if any(y < min(prev) for y in older) else max(prev)
    return _carry(last, cat, c) and all(y < bar for y in _years(last, c))


def newer_same_category(a: list[Any], c: Catalog, cat: str) -> bool:
    """Newer than every item of the last list; when the catalog has nothing of the category newer than
    its newest (it held the newest), newer than its oldest, which is the best that can be done."""
    prev, last = _years(_items(a[-2][1]), c), _items(a[-1][1])
    if not prev:
        return False
    newer = [y for i, y in c.year.items() if y is not None and cat in c.cats[i]]
    bar = max(prev) if any(y > max(prev) for y in newer) else min(prev)
    return _carry(last, cat, c) and all(y > bar for y in _years(last, c))


def liked_excluded(a: list[Any], c: Catalog, title: str) -> bool:
    item, last = c.by_title[title], _items(a[-1][1])
    liked = [x["item_id"] for x in a[-1][1].get("state", {}).get("liked", [])]
    return bool(last) and item not in last and item in liked


def liked_position(a: list[Any], c: Catalog, n: int) -> bool:
    prev, last = _items(a[-2][1]), _items(a[-1][1])
    liked = [x["item_id"] for x in a[-1][1].get("state", {}).get("liked", [])]
    return len(prev) >= n and prev[n - 1] in liked and bool(last) and not set(prev) & set(last)


def avoids_some_category(a: list[Any], c: Catalog, _: Any) -> bool:
    avoid = a[-1][1].get("filters", {}).get("avoid_categories") or []
    last = _items(a[-1][1])
    return bool(avoid) and bool(last) and not any(c.cats[i] & set(avoid) for i in last)


def avoids(a: list[Any], c: Catalog, cat: str) -> bool:
    last = _items(a[-1][1])
    return bool(last) and not any(cat in c.cats[i] for i in last)


def unseen(a: list[Any], c: Catalog, titles: list[str]) -> bool:
    seen = {c.by_title[t] for t in titles} | set(_items(a[-2][1]))
    last = _items(a[-1][1])
    return bool(last) and not seen & set(last)


def why(a: list[Any], c: Catalog, _: Any) -> bool:
    content, extra = a[-1]
    prev = _items(a[-2][1])
    return extra.get("turn") == "why" and bool(prev) and all(shown(c.title[i]) in content for i in prev)


def about(a: list[Any], c: Catalog, title: str) -> bool:
    content, extra = a[-1]
    item = c.by_title[title]
    return extra.get("turn") == "about" and shown(title) in content and all(x in content for x in c.cats[item])


def redirect(a: list[Any], c: Catalog, _: Any) -> bool:
    content, extra = a[-1]
    return extra.get("turn") == "off_topic" and not _items(extra) and not is_bare(content, c)


def small_talk(a: list[Any], c: Catalog, _: Any) -> bool:
    return a[-1][1].get("turn") == "small_talk" and not _items(a[-1][1])


def category(a: list[Any], c: Catalog, cat: str) -> bool:
    return _carry(_items(a[-1][1]), cat, c)


def count_category(a: list[Any], c: Catalog, arg: tuple[int, str]) -> bool:
    n, cat = arg
    last = _items(a[-1][1])
    return len(last) == n and _carry(last, cat, c)


CHECKS: dict[str, Callable[[list[Any], Catalog, Any], bool]] = {f.__name__: f for f in (
    different_same_category, years_and_category, older_same_category, newer_same_category, liked_excluded,
    liked_position, avoids_some_category, avoids, unseen, why, about, redirect, small_talk, category,
    count_category)}


def run_single(client: Any, catalog: Catalog, cases: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    rows = []
    for kind, cat, text in cases:
        content, extra, seconds = chat(client, [{"role": "user", "content": text}])
        ids = _items(extra)
        good = sum((cat not in catalog.cats[i]) if kind == "negation" else (cat in catalog.cats[i]) for i in ids)
        rows.append({"kind": kind, "category": cat, "request": text, "items": len(ids), "good": good,
                     "names_items": names_items(content, extra.get("items", [])), "bare": is_bare(content, catalog),
                     "ms": round(seconds * 1000, 1), "understood": extra.get("understood"),
                     "filters": extra.get("filters"), "answer": content[:400]})
    return rows


def run_dialogues(client: Any, catalog: Catalog, dialogues: Sequence[tuple[str, list[str], str, Any]]
                  ) -> list[dict[str, Any]]:
    rows = []
    for name, turns, check, arg in dialogues:
        messages: list[dict[str, str]] = []
        answers, ms = [], []
        for text in turns:
            messages.append({"role": "user", "content": text})
            content, extra, seconds = chat(client, messages)
            messages.append({"role": "assistant", "content": content})
            answers.append((content, extra))
            ms.append(seconds * 1000)
        rows.append({"dialogue": name, "check": check, "obeyed": bool(CHECKS[check](answers, catalog, arg)),
                     "bare": sum(is_bare(a, catalog) for a, _ in answers), "turns": len(turns),
                     "ms": [round(x, 1) for x in ms], "transcript": [m["content"][:2000] for m in messages]})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        n_items = sum(r["items"] for r in mine)
        out.append({"kind": kind, "turns": len(mine), "naming_items": sum(r["names_items"] for r in mine),
                    "share_good": round(sum(r["good"] for r in mine) / max(1, n_items), 3),
                    "bare": sum(r["bare"] for r in mine), "p50_ms": round(statistics.median(r["ms"] for r in mine))})
    return out


def print_tables(name: str, table: list[dict[str, Any]], dialogues: list[dict[str, Any]]) -> None:
    print(f"\n{name}: single requests")
    print(f"{'kind':<12} {'turns':>5} {'naming items':>12} {'in category':>11} {'bare':>5} {'p50 ms':>7}")
    for r in table:
        print(f"{r['kind']:<12} {r['turns']:>5} {r['naming_items']:>12} {r['share_good']:>11.0%} {r['bare']:>5} "
              f"{r['p50_ms']:>7}")
    obeyed = sum(d["obeyed"] for d in dialogues)
    print(f"{name}: dialogues obeyed {obeyed}/{len(dialogues)}, bare answers {sum(d['bare'] for d in dialogues)}")
    for d in dialogues:
        if not d["obeyed"]:
            print(f"  not obeyed: {d['dialogue']} ({d['check']}): " + " | ".join(x[:120] for x in d["transcript"]))


def serve_and_run(bundle: Path, engine: str, port: int, name: str) -> dict[str, Any]:
    import openai

    from ui.local_server import LocalServer

    catalog = Catalog(pd.read_parquet(bundle / "catalog.parquet"))
    with LocalServer(bundle, engine=engine, port=port, start_timeout=900) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)
        chat(client, [{"role": "user", "content": "hello"}])  # warm up
        single = run_single(client, catalog, SINGLE[name])
        dialogues = run_dialogues(client, catalog, DIALOGUES[name])
    table = summarise(single)
    print_tables(name, table, dialogues)
    return {"table": table, "single": single, "dialogues": dialogues}


def parse_cost(bundle: Path) -> dict[str, Any]:
    """Reading 9 user messages of 2,000 characters: ML-100k (rules + encoder, cold cache) and a
    100k-title synthetic catalog (rules; encoder over random item vectors of the same size)."""
    import numpy as np

    from chatrec.bookshop import make_book_catalog
    from chatrec.chat import CatalogIndex, understand
    from chatrec.dialogue import Conversation
    from chatrec.picks import CoOccurrence, Picker
    from chatrec.understanding import TextSpace

    base = "I loved Toy Story and The Usual Suspects but hated Alien. Something funny from the nineties, " \
           "not a horror movie, with a clever plot and great music. "
    messages = [("user", (base * 20)[: 2000 - 10] + f" turn {n}") for n in range(9)]
    out: dict[str, Any] = {}
    frame = pd.read_parquet(bundle / "catalog.parquet")
    index = CatalogIndex(frame)
    space = TextSpace.for_catalog(frame, "movie")
    conv = Conversation(index, space, Picker(index.categories, CoOccurrence(index.position, None)), "movie")
    def cold(conv: Conversation) -> Callable[[], Any]:
        def read() -> Any:
            conv.forget()
            return conv.rebuild(messages)
        return read

    for label, fn in (("ml100k_rules_ms", lambda: [understand(t, index) for _, t in messages]),
                      ("ml100k_rules_and_encoder_ms", cold(conv))):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = round(statistics.median(times), 1)
    big = make_book_catalog(100_000)
    t0 = time.perf_counter()
    big_index = CatalogIndex(big)
    out["synthetic_100k_index_build_s"] = round(time.perf_counter() - t0, 2)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(big), space.items.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    big_space = TextSpace(space.encode_many, vectors, big["categories"].tolist(), "book")
    big_conv = Conversation(big_index, big_space, Picker(big_index.categories, CoOccurrence(big_index.position, None)),
                            "book")
    for label, fn in (("synthetic_100k_rules_ms", lambda: [understand(t, big_index) for _, t in messages]),
                      ("synthetic_100k_rules_and_encoder_ms", cold(big_conv))):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = round(statistics.median(times), 1)
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="chat", choices=["chat", "parse"])
    ap.add_argument("--bundle", help="MovieLens-100k bundle (the default demo bundle)")
    ap.add_argument("--books-bundle", help="bookshop bundle (default: built in a temp dir)")
    ap.add_argument("--engine", default="transformers")
    ap.add_argument("--books-engine", default="transformers",
                    help="engine for the bookshop's tiny model (vLLM on CPU has no kernel for its head size)")
    ap.add_argument("--port", type=int, default=8771)
    ap.add_argument("--only", choices=["movies", "books"])
    ap.add_argument("--out", default=str(RESULTS / "conversation.json"))
    args = ap.parse_args()
    if args.what == "parse":
        result = parse_cost(Path(args.bundle))
        (RESULTS / "conversation_parse.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    results: dict[str, Any] = {"engine": args.engine}
    if args.only in (None, "movies"):
        results["movies"] = serve_and_run(Path(args.bundle), args.engine, args.port, "movies")
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.only in (None, "books"):
        books = Path(args.books_bundle) if args.books_bundle else None
        if books is None or not (books / "catalog.parquet").exists():
            from chatrec.bookshop import make_book_bundle

            books = make_book_bundle(books or Path(tempfile.mkdtemp()) / "books")
        results["books_engine"] = args.books_engine
        results["books"] = serve_and_run(books, args.books_engine, args.port + 1, "books")
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
