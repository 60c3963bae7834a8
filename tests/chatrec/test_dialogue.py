"""A conversation on a non-movie catalog (chatrec.dialogue): the words, the follow-ups, every turn answered.

The real text encoder (MiniLM, offline) reads a synthetic bookshop that no rule of the chat code
knows; the model's retrieval is replaced by a recorder so what is checked is the reading.
"""

from __future__ import annotations

from typing import Any

import pytest

from chatrec.bookshop import make_book_catalog, make_book_interactions
from chatrec.chat import CatalogIndex
from chatrec.dialogue import Conversation, Turn
from chatrec.picks import CoOccurrence, Picker
from chatrec.understanding import TextSpace


@pytest.fixture(scope="module")
def shop() -> Conversation:
    catalog = make_book_catalog(144)
    index = CatalogIndex(catalog)
    space = TextSpace.for_catalog(catalog, "book")
    co = CoOccurrence(index.position, make_book_interactions(catalog, n_users=120), ["dislike"])
    return Conversation(index, space, Picker(index.categories, co), "book", catalog["text"].tolist())


class Recorder:
    """Stands in for the model's retrieval: returns nothing, remembers what it was asked."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, history: list[tuple[str, str]], k: int, request: str | None,
                 include: list[str] | None) -> list[str]:
        self.calls.append({"history": history, "k": k, "request": request, "include": include})
        return []


def talk(conv: Conversation, *turns: str) -> list[Turn]:
    messages: list[tuple[str, str]] = []
    out = []
    for text in turns:
        messages.append(("user", text))
        out.append(conv.answer(messages, Recorder()))
        messages.append(("assistant", out[-1].text))
    return out


def cats(conv: Conversation, turn: Turn) -> list[set[str]]:
    return [set(conv.index.categories[i]) for i, _ in turn.items]


@pytest.mark.parametrize("text,category", [
    ("A detective solving a murder.", "Mystery"),
    ("Spaceships and alien planets.", "Science Fiction"),
    ("Wizards and dragons, please.", "Fantasy"),
    ("I want to learn to bake bread.", "Cookbooks"),
    ("Ghosts and a haunted house.", "Horror"),
    ("recomend a mistery", "Mystery"),  # misspelled: near the catalog's own name
])
def test_words_never_naming_a_category_imply_it(shop: Conversation, text: str, category: str) -> None:
    turn = talk(shop, text)[0]
    assert turn.kind == "recommendation" and len(turn.items) == 3
    assert all(category in c for c in cats(shop, turn)), (text, turn.text)
    assert turn.extra["filters"]["implied_categories"][0] == category
    assert all(line.split(". ", 1)[1].split(":")[0] in turn.text for line in turn.text.splitlines()[1:])


def test_follow_ups_act_on_the_state_rebuilt_from_the_messages(shop: Conversation) -> None:
    first, second = talk(shop, "Recommend a mystery.", "Not those, different ones please.")
    shown = {i for i, _ in first.items}
    assert second.kind == "recommendation" and shown.isdisjoint(i for i, _ in second.items)
    assert all("Mystery" in c for c in cats(shop, second))  # the category carries over
    assert second.extra["state"]["categories"] == ["Mystery"]
    assert set(second.extra["state"]["shown"]) == {shop.index.ids[i] for i in shown}

    first, older = talk(shop, "A history book, please.", "Something older.")
    oldest = min(shop.index.years[i] or 0 for i, _ in first.items)
    assert older.items and all((shop.index.years[i] or 0) < oldest for i, _ in older.items)
    assert all("History" in c for c in cats(shop, older)) and older.extra["filters"]["years"] == [0, oldest - 1]

    first, more = talk(shop, "Spaceships and alien planets.", "More like the second one.")
    second_pick = shop.index.ids[first.items[1][0]]
    assert [x["item_id"] for x in more.extra["state"]["liked"]] == [second_pick]
    assert more.items and second_pick not in {shop.index.ids[i] for i, _ in more.items}

    _, no_romance = talk(shop, "Recommend a book.", "No romance.")
    assert no_romance.extra["filters"]["avoid_categories"] == ["Romance"]
    assert no_romance.items and not any("Romance" in c for c in cats(shop, no_romance))


def test_newer_than_the_newest_falls_back_to_newer_than_the_oldest(shop: Conversation) -> None:
    """The last list held the newest mystery: "more recent" then means newer than its oldest, and says so."""
    from chatrec.chat import shown

    idx = shop.index
    mystery = [i for i in range(len(idx.ids)) if "Mystery" in idx.categories[i] and idx.years[i]]
    newest, oldest = max(mystery, key=lambda i: idx.years[i]), min(mystery, key=lambda i: idx.years[i])
    listing = (f"Here are 2 Mystery books for you:\n1. {shown(idx.titles[newest])}: Mystery.\n"
               f"2. {shown(idx.titles[oldest])}: Mystery.")
    turn = shop.answer([("user", "Recommend a mystery."), ("assistant", listing), ("user", "Something more recent.")],
                       Recorder())
    assert turn.kind == "recommendation" and turn.items
    assert all(idx.years[i] > idx.years[oldest] and "Mystery" in idx.categories[i] for i, _ in turn.items)
    assert turn.extra["filters"]["years"] == [idx.years[oldest] + 1, 9999]
    assert "newer than the whole last list" in turn.text and "left out the years" not in turn.text


def test_the_retrieval_is_asked_under_the_hard_filters(shop: Conversation) -> None:
    rec = Recorder()
    shop.answer([("user", "Suggest two books, but no poetry and nothing from before 2000.")], rec)
    (call,) = rec.calls
    allowed = set(call["include"])
    for item_id in allowed:
        i = shop.index.position[item_id]
        assert "Poetry" not in shop.index.categories[i] and (shop.index.years[i] or 0) >= 2000
    assert call["request"] and call["history"] == []


def test_every_turn_is_answered_in_words_true_to_the_data(shop: Conversation) -> None:
    rec, why = talk(shop, "Show me cookbooks.", "Why those?")
    assert why.kind == "why" and not why.items
    for i, _ in rec.items:  # each pick of the last list, with its categories and how many readers had it
        title = shop.index.titles[i]
        line = next(x for x in why.text.splitlines() if title in x)
        assert "Cookbooks" in line and f"{int(shop.picker.co.count[i])} people" in line
    joke = talk(shop, "Tell me a joke.")[0]
    assert joke.kind == "off_topic" and not joke.items and "books from this catalog" in joke.text
    thanks = talk(shop, "Any travel books?", "Thank you!")[1]
    assert thanks.kind == "small_talk" and thanks.text.startswith("You're welcome")
    title = shop.index.titles[5]
    about = talk(shop, f"Tell me about {title}")[0]
    assert about.kind == "about" and shop.index.categories[5][0] in about.text and title in about.text


def test_why_repeats_the_evidence_the_list_gave() -> None:
    """"why those?" names, for each pick, the same liked title and co-reader count as the list did:
    here item 2 was had by 30 of item 0's 100 readers and by all 10 of item 1's, so it is closest to
    item 1 (cosine), although more people had it with item 0."""
    import pandas as pd

    catalog = make_book_catalog(144)
    index = CatalogIndex(catalog)
    rows = [(f"a{u}", "0") for u in range(100)] + [(f"a{u}", "2") for u in range(30)]
    rows += [(f"b{u}", i) for u in range(10) for i in ("1", "2")]
    log = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(action="like")
    log["item_id"] = log["item_id"].map(lambda i: index.ids[int(i)])
    conv = Conversation(index, None, Picker(index.categories, CoOccurrence(index.position, log, ["dislike"])), "book",
                        catalog["text"].tolist())
    names = [index.titles[0], index.titles[1]]
    rec, why = talk(conv, f"I loved {names[0]} and {names[1]}. What should I read next?", "Why those?")
    assert rec.kind == "recommendation" and why.kind == "why"
    line = next(x for x in rec.text.splitlines() if index.titles[2] in x)
    shown_title = line.split(". ", 1)[1].split(":")[0]
    assert "10 people who had" in line  # closest to item 1
    assert line.split("; ")[-1].rstrip(".") in next(x for x in why.text.splitlines() if shown_title in x), why.text


def test_listed_titles_may_hold_a_colon(shop: Conversation) -> None:
    """A shown list is read back from the answer's text: "1. Mission: Impossible (1996): facts"."""
    title, pos = next(iter(shop.by_shown.items()))
    shop.by_shown["Mission: Impossible (1996)"] = pos + 1
    try:
        text = ("Here are 2 for you:\n1. Mission: Impossible (1996): Action, Adventure; 206 people had it.\n"
                f"2. {title}: a book in the catalog.")
        assert shop.listed(text) == [pos + 1, pos]
    finally:
        del shop.by_shown["Mission: Impossible (1996)"]
