"""Pure rendering: reasoning split (also mid-stream), item cards, chat display, status lines."""

from __future__ import annotations

import pytest

from ui.render import (
    ItemCard,
    assistant_messages,
    card_html,
    cards_markdown,
    chat_display,
    conversation_for_server,
    make_cards,
    metadata_lines,
    reason_from_answer,
    split_reasoning,
    status_html,
)


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("<think>user likes sci-fi</think>Try Alien (1979).", "user likes sci-fi", "Try Alien (1979)."),
        ("no reasoning at all", "", "no reasoning at all"),
        ("<think>half way", "half way", ""),  # still thinking mid-stream
        ("<think>done</think>Try <thi", "done", "Try"),  # a tag cut in two is held back
        ("<think>almost</th", "almost", ""),
        ("prompted think</think>Answer", "prompted think", "Answer"),  # template opened <think> itself
        ("<think>a</think>one <think>b</think>two", "a\n\nb", "one two"),
        ("<think></think>Empty thought", "", "Empty thought"),
    ],
)
def test_split_reasoning(text: str, reasoning: str, answer: str) -> None:
    assert split_reasoning(text) == (reasoning, answer)


def test_split_reasoning_every_prefix_never_leaks_tags() -> None:
    full = "<think>she liked Heat</think>Try Alien (1979) — tense sci-fi."
    for n in range(len(full) + 1):
        _, answer = split_reasoning(full[:n])
        assert "<" not in answer and "think" not in answer, full[:n]
    assert split_reasoning(full)[1] == "Try Alien (1979) — tense sci-fi."


def test_assistant_messages_hide_or_show_reasoning() -> None:
    text = "<think>because</think>Watch Heat."
    hidden = assistant_messages(text, show_reasoning=False)
    assert hidden == [{"role": "assistant", "content": "Watch Heat."}]
    shown = assistant_messages(text, show_reasoning=True)
    assert shown[0] == {"role": "assistant", "content": "because", "metadata": {"title": "Reasoning"}}
    assert shown[1]["content"] == "Watch Heat."


def test_chat_display_and_server_conversation() -> None:
    turns = [
        {"user": "hi", "raw": "<think>x</think>Try Alien."},
        {"user": "again", "error": "cannot reach the chatrec server at http://h:1"},
        {"user": "more", "raw": "<think>still thinking"},
    ]
    shown = chat_display(turns, show_reasoning=False)
    assert [m["role"] for m in shown] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert shown[3]["content"] == "Error: cannot reach the chatrec server at http://h:1"
    assert shown[5]["content"] == "…"  # nothing visible yet
    msgs = conversation_for_server(turns, "next")
    assert msgs == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Try Alien."},
        {"role": "user", "content": "next"},
    ]


def test_metadata_lines_pick_year_and_categories() -> None:
    row = {"item_id": "m1", "title": "Heat", "text": "long text", "categories": ["Action", "Crime"], "year": 1995.0,
           "release_date": "01-Jan-1995", "empty": None}
    assert metadata_lines(row) == ("1995", "Action, Crime", "release date: 01-Jan-1995")
    # the year is not repeated when the title carries it
    assert metadata_lines({"title": "Alien (1979)", "year": 1979, "categories": ["Sci-Fi"]}) == ("Sci-Fi",)


def test_reason_from_answer() -> None:
    answer = "You could try Alien (1979) — a tense sci-fi classic. Or Heat (1995): a heist film.\nBye"
    assert reason_from_answer("Alien (1979)", answer) == "a tense sci-fi classic."
    assert reason_from_answer("Heat (1995)", answer) == "a heist film."
    assert reason_from_answer("Fargo (1996)", answer) == ""
    assert reason_from_answer("Heat", "Also Heat.") == ""  # nothing but punctuation after it
    assert reason_from_answer("Alien (1979)", "Alien is great, scary too.") == "is great, scary too."
    # the chat writes a catalogued "Love Bug, The (1969)" as a person does
    chat = "1. The Love Bug (1969): Comedy, Children's; 28 people who had Aladdin also had it."
    assert reason_from_answer("Love Bug, The (1969)", chat) == "Comedy, Children's; 28 people who had Aladdin also had it."


def test_make_cards_use_catalog_metadata_and_fall_back_to_rank() -> None:
    items = [{"item_id": "m1", "title": "Heat", "score": -0.5, "sid": "<|sid_begin|><|s0_1|><|sid_end|>"},
             {"item_id": "m2", "title": "Alien", "score": -1.25}]
    rows = {"m1": {"item_id": "m1", "title": "Heat", "year": 1995, "categories": ["Action"]}}
    cards = make_cards(items, "Heat — a heist done right.", rows)
    assert cards[0] == ItemCard(item_id="m1", title="Heat", meta=("1995", "Action"), reason="a heist done right.",
                                score=-0.5, sid="<|sid_begin|><|s0_1|><|sid_end|>", rank=1)
    assert cards[1].reason == "Ranked #2 for your history (score -1.250)"
    assert cards[1].meta == ()
    # a server-side reason wins
    assert make_cards([{"item_id": "m3", "title": "X", "reason": "because"}])[0].reason == "because"


def test_card_html_escapes_everything() -> None:
    card = ItemCard(item_id='m"1', title="<script>alert(1)</script>", meta=("A&B",), reason="<b>x</b>", score=0.5)
    out = card_html(card)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert 'data-item-id="m&quot;1"' in out
    assert "A&amp;B" in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert "score 0.500" in out
    assert "**<script>alert(1)</script>**" in cards_markdown([card])


def test_status_html() -> None:
    assert status_html("") == ""
    assert "chatrec-status-error" in status_html("down <x>", kind="error")
    assert "down &lt;x&gt;" in status_html("down <x>", kind="error")
    with pytest.raises(ValueError, match="info, ok or error"):
        status_html("x", kind="fatal")


def test_the_understood_line_shows_filters_and_dialogue_state() -> None:
    from ui.render import understood_line

    extra = {"turn": "recommendation",
             "filters": {"k": 3, "implied_categories": ["Western"], "avoid_categories": ["Horror"], "years": [0, 1969]},
             "state": {"liked": [{"item_id": "1", "title": "Toy Story (1995)"}], "disliked": [], "shown": ["4", "5"]}}
    line = understood_line(extra)
    assert line == ("Understood: from your words: Western; avoiding Horror; before 1970; liked: Toy Story (1995); "
                    "2 shown so far.")
    assert understood_line({"filters": {"k": 3}, "state": {}}) == "" and understood_line(None) == ""
