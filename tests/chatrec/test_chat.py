"""Reading a chat message: recommendation or not, K, categories, years, linked titles (chatrec.chat)."""

from __future__ import annotations

import pytest

from chatrec.chat import CatalogIndex, display_title, find_years, understand
from chatrec.testing import make_catalog, make_shop_catalog


@pytest.fixture(scope="module")
def movies() -> CatalogIndex:
    cat = make_catalog(40)
    extra = cat.iloc[:3].copy()
    extra["item_id"] = ["s1", "s2", "s3"]
    extra["title"] = ["Usual Suspects, The (1995)", "Alien (1979)", "Aliens (1986)"]
    extra["year"] = [1995, 1979, 1986]
    return CatalogIndex(__import__("pandas").concat([cat, extra], ignore_index=True))


def test_plain_word_requests_are_recommendation_turns_with_filters(movies: CatalogIndex) -> None:
    cases = {
        "Recommend a funny movie for tonight.": (["Comedy"], None, None),
        "Something scary, please.": (["Horror"], None, None),
        "Any good sci-fi from the 90s?": (["Sci-Fi"], (1990, 1999), None),
        "Give me five romantic films from before 1980": (["Romance"], (0, 1979), 5),
        "I'd like 2 dramas from the eighties": (["Drama"], (1980, 1989), 2),
        "What should I watch next?": ([], None, None),
    }
    for text, (cats, years, k) in cases.items():
        u = understand(text, movies)
        assert u.recommend, text
        assert (u.categories, u.years, u.k) == (cats, years, k), text


def test_titles_link_year_aware_with_the_action_the_words_imply(movies: CatalogIndex) -> None:
    u = understand("I loved Alien (1979) and The Usual Suspects but hated Aliens. Not Night 3 please, "
                   "recommend something", movies)
    got = {(x.item_id, x.action) for x in u.linked}
    assert {("s2", "like"), ("s1", "like"), ("s3", "dislike")} <= got
    assert u.recommend and u.categories == []  # no category read out of the titles
    assert understand("I loved Alien (1986)", movies).linked[0].item_id == "s3"  # the year picks Aliens
    assert display_title("Usual Suspects, The (1995)") == ("The Usual Suspects", 1995)


def test_a_list_of_titles_after_one_verb_links_every_title() -> None:
    import pandas as pd

    cat = make_catalog(10)
    titles = ["Usual Suspects, The (1995)", "Heat (1995)", "Fargo (1996)", "Sense and Sensibility (1995)",
              "Emma (1996)", "Alien (1979)"]
    extra = cat.iloc[: len(titles)].copy()
    extra["item_id"] = [f"t{i}" for i in range(len(titles))]
    extra["title"] = titles
    index = CatalogIndex(pd.concat([cat, extra], ignore_index=True))

    def liked(text: str) -> list[tuple[str, str]]:
        return [(x.item_id, x.action) for x in understand(text, index).linked]

    assert liked("I loved The Usual Suspects, Heat and Fargo. What next?") == [("t0", "like"), ("t1", "like"),
                                                                              ("t2", "like")]
    assert liked("i loved sense and sensibility, emma and alien") == [("t3", "like"), ("t4", "like"), ("t5", "like")]
    assert liked("Loved Heat, Fargo last year, and something funny") == [("t1", "like"), ("t2", "like")]
    assert liked("I loved Heat, but I hated Fargo") == [("t1", "like"), ("t2", "dislike")]
    u = understand("I liked Alien, it was scary, and I want a comedy now", index)
    assert [x.item_id for x in u.linked] == ["t5"] and "Comedy" in u.categories


def test_titles_with_periods_and_trigger_words_inside_a_list() -> None:
    """Abbreviations and initials do not end the sentence; a capitalised "Like"/"Love" or "Some"/"One"
    inside a list starts a title (these cut 15% of 3-title messages on ML-100k short)."""
    import pandas as pd

    cat = make_catalog(10)
    titles = ["Mr. Holland's Opus (1995)", "G.I. Jane (1997)", "Some Like It Hot (1959)", "One Fine Day (1996)",
              "Everyone Says I Love You (1996)", "E.T. the Extra-Terrestrial (1982)", "Heat (1995)"]
    extra = cat.iloc[: len(titles)].copy()
    extra["item_id"] = [f"t{i}" for i in range(len(titles))]
    extra["title"] = titles
    index = CatalogIndex(pd.concat([cat, extra], ignore_index=True))

    def liked(text: str) -> list[str]:
        return [x.item_id for x in understand(text, index).linked if x.action == "like"]

    assert liked("I loved Mr. Holland's Opus, G.I. Jane and Heat. What should I watch next?") == ["t0", "t1", "t6"]
    assert liked("I loved Heat, Some Like It Hot and One Fine Day.") == ["t6", "t2", "t3"]
    assert liked("I loved Everyone Says I Love You and E.T. the Extra-Terrestrial. Any ideas?") == ["t4", "t5"]
    assert liked("Loved Heat. Like Some Like It Hot too.") == ["t6", "t2"]  # a sentence's first word is the verb
    u = understand("I'd like some comedies. I loved Heat.", index)
    assert [x.item_id for x in u.linked] == ["t6"] and "Comedy" in u.categories


def test_unknown_titles_are_reported_never_guessed(movies: CatalogIndex) -> None:
    u = understand("a movie called Zzyzx Qwerty 2099", movies)
    assert u.linked == [] and u.unmatched == ["Zzyzx Qwerty 2099"] and not u.recommend
    u = understand('I liked "Completely Unknown Film", more like it', movies)
    assert u.linked == [] and u.unmatched == ["Completely Unknown Film"]
    u = understand("I'd like a comedy", movies)  # lower-case words are no title: nothing reported
    assert u.unmatched == [] and u.categories == ["Comedy"]


def test_other_turns_are_not_recommendation_turns(movies: CatalogIndex) -> None:
    for text in ("Thanks!", "hello", "What is The Usual Suspects about?", "Tell me about Alien"):
        assert not understand(text, movies).recommend, text
    assert understand("Tell me about Alien", movies).linked[0].action == "mention"


def test_a_shop_catalog_reads_its_own_categories_and_titles() -> None:
    shop = CatalogIndex(make_shop_catalog(36))
    u = understand("Can you recommend some telescopes?", shop)
    assert u.recommend and u.categories == ["Telescopes"] and u.years is None
    assert understand("any star charts for a beginner?", shop).categories == ["Star Charts"]
    title = shop.titles[3]
    u = understand(f"I loved the {title}, what else for baking?", shop)
    assert [x.item_id for x in u.linked] == [shop.ids[3]] and u.categories == ["Baking"]


def test_years() -> None:
    assert find_years("a 1970s thriller") == (1970, 1979)
    assert find_years("something from 2005") == (2005, 2005)
    assert find_years("after 1990") == (1991, 9999)
    assert find_years("no year here, 3 items") is None


def test_reading_a_huge_message_is_bounded(movies: CatalogIndex) -> None:
    import time

    t0 = time.perf_counter()
    u = understand("I liked Zorblax Mega. " * 20_000 + "Recommend a comedy", movies)
    assert time.perf_counter() - t0 < 2.0
    assert u.recommend and u.categories == ["Comedy"] and len(u.unmatched) <= 1
