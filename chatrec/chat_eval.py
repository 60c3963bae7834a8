"""The served chat path as a `chatrec eval` system (any system name starting with `chat`).

Each case's history goes in `chatrec.history` and one user message is answered by the same
`Conversation.answer` that `/v1/chat/completions` runs: the conversational request ("I'm in the
mood for a comedy film.") when there is one, else "What should I watch next?" (the domain's
verb, `Domain.request`). The items of the answer are the ranked list scored. Co-occurrence comes from the
training split only, so no held-out target leaks into the neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatrec.retrieval import SERVED_LAST_LEVEL


class ChatSystem:
    """`System` protocol of `chatrec.evaluation` over the served chat turn."""

    def __init__(self, name: str, bundle: Any, engine: str = "auto", last_level: str = SERVED_LAST_LEVEL,
                 trim_history: bool = True):
        self.name, self.bundle, self.engine, self.last_level = name, bundle, engine, last_level
        self.trim_history = trim_history
        self.rec: Any = None
        self.conversation: Any = None
        self._retrieve: Any = None

    def fit(self, split: Any, catalog: Any) -> dict[str, Any]:
        from chatrec.dialogue import Conversation, model_retrieve
        from serve.service import ServeConfig, served_recommender

        served = ServeConfig(bundle=str(self.bundle.root), engine=self.engine, last_level=self.last_level,
                             trim_history=self.trim_history)
        self.rec = served_recommender(served)
        train = split.train[["user_id", "item_id", "action"]]
        self.conversation = Conversation.for_recommender(self.rec, interactions=train)
        self._retrieve = model_retrieve(self.rec)
        return {"engine": served.engine, "path": "chat turn (chatrec.dialogue)", "bundle": str(self.bundle.root),
                "text_encoder": self.conversation.space is not None}

    def recommend(self, cases: Sequence[Any], k: int, constraints: Sequence[Any] | None = None) -> list[list[str]]:
        from tqdm.auto import tqdm

        plain = self.rec.domain.request  # "What should I watch next?"
        ids = self.conversation.index.ids
        out = []
        for row, case in enumerate(tqdm(cases, desc=self.name, leave=False)):
            history = list(zip(case.items, case.actions, strict=True))
            con = constraints[row] if constraints is not None else None
            text = con.text if con is not None else plain
            turn = self.conversation.answer([("user", text)], self._retrieve, k=k, history=history,
                                            exclude_item_ids=list(case.items))
            out.append([ids[i] for i, _ in turn.items])
        return out

    def recommend_stated(self, cases: Sequence[Any], k: int) -> tuple[list[list[str]], float]:
        """The stated-titles protocol in words: one message naming each case's items as a person types
        them ("I loved The Usual Suspects and Heat. What should I watch next?"), no history. Returns
        the ranked lists and the share of cases whose every title was understood (linked as liked)."""
        from tqdm.auto import tqdm

        from chatrec.chat import display_title
        from chatrec.dialogue import join

        index = self.conversation.index
        out, understood = [], 0
        for case in tqdm(cases, desc=f"{self.name} (stated titles)", leave=False):
            names = [display_title(str(index.titles[index.position[i]]))[0] for i in case.items]
            turn = self.conversation.answer([("user", f"I loved {join(names)}. {self.rec.domain.request}")],
                                            self._retrieve, k=k)
            liked = {ref["item_id"] for ref in turn.extra.get("state", {}).get("liked", [])}
            understood += set(case.items) <= liked
            out.append([index.ids[i] for i, _ in turn.items])
        return out, understood / max(len(cases), 1)

    def close(self) -> None:
        if self.rec is not None:
            self.rec.close()
            self.rec = None
