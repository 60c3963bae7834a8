"""The events reading (finetune/events.py): one position per event, served as one token per (action, item)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chatrec.errors import ConfigError


def test_events_reading_refuses_what_it_would_ignore() -> None:
    from finetune.sequence import EVENTS_AVERAGE_FROM, EVENTS_DROPOUT, SequenceConfig

    assert SequenceConfig(reading="events").dropout == EVENTS_DROPOUT
    assert SequenceConfig(reading="events").average_from == EVENTS_AVERAGE_FROM
    assert SequenceConfig().dropout == 0.0 and SequenceConfig().average_from == 0.0
    with pytest.raises(ConfigError, match="lora"):
        SequenceConfig(reading="events", lora=True)
    with pytest.raises(ConfigError, match="reading"):
        SequenceConfig(reading="items")
    with pytest.raises(ConfigError, match="events_max_len"):
        SequenceConfig(reading="events", events_max_len=0)


def test_windows_make_every_event_after_the_first_a_target_once() -> None:
    from finetune.events import windows

    seq = (np.arange(11), np.zeros(11, dtype=np.int64))
    wins = windows([seq], max_len=4)
    assert [w[0].tolist() for w in wins] == [[6, 7, 8, 9, 10], [2, 3, 4, 5, 6], [0, 1, 2]]
    assert sum(len(w[0]) - 1 for w in wins) == 10


@pytest.mark.parametrize("item_input", [False, True])
def test_the_materialised_model_scores_what_the_trained_one_scores(tmp_path: Path, item_input: bool) -> None:
    """The exported causal LM (event tokens, untied head, bias file) ranks every item exactly as the
    in-memory events model does, so what is served is what was trained (with or without the items'
    residuals in the input rows)."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM

    from chatrec.testing import make_tiny_bundle
    from finetune.events import EVENT_BIAS, EventsModel, materialise
    from finetune.sequence import SequenceConfig, recipe_model
    from tokenizer_ext import TokenMap

    bundle = make_tiny_bundle(tmp_path / "b")
    sids = pd.read_parquet(bundle.root / "sids.parquet")
    rm, _, tok, tm = recipe_model(bundle.model_dir, SequenceConfig(keep_layers=2))
    actions = sorted(tm.actions)
    code_rows = torch.tensor([[tm.code_id(lv, int(c)) - rm.first for lv, c in enumerate(codes)] for codes in sids["codes"]])
    action_rows = torch.tensor([tm.action_id(a) - rm.first for a in actions])
    em = EventsModel(rm, code_rows, action_rows, dropout=0.0, item_input=item_input)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero item residuals and action shifts, as training leaves them
        em.residual.copy_(torch.randn(em.residual.shape, generator=gen) * 0.1)
        em.shift.copy_(torch.randn(em.shift.shape, generator=gen) * 0.1)
        em.item_bias.copy_(torch.randn(em.item_bias.shape, generator=gen) * 0.1)
    em.eval()
    item_ids = sids["item_id"].astype(str).tolist()
    out = materialise(em, tok, tm, item_ids, actions, 50, bundle.model_dir, tmp_path / "served")

    items, acts = torch.tensor([[3, 17, 5, 30]]), torch.tensor([[0, 1, 1, 0]])
    with torch.no_grad():
        want = em.scores(items, acts, torch.ones_like(items), action=1)[0].numpy()
    served = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not served.config.tie_word_embeddings
    stm = TokenMap.load(out)
    assert stm.event_range == (stm.events["first"], stm.events["first"] + len(actions) * len(item_ids))
    first, n = stm.events["first"], len(item_ids)
    prompt = torch.tensor([[first + int(a) * n + int(i) for i, a in zip(items[0], acts[0], strict=True)]])
    with torch.no_grad():
        logits = served(prompt).logits[0, -1]
    got = torch.log_softmax(logits, -1)[torch.from_numpy(stm.event_ids(actions[1]))].numpy()
    got = got + np.load(out / EVENT_BIAS)[1]
    assert np.argsort(-got).tolist() == np.argsort(-want).tolist()
    np.testing.assert_allclose(got - got.max(), want - want.max(), atol=1e-4)


def test_finetune_export_and_recommend_with_the_events_reading(tmp_path: Path) -> None:
    """`chatrec finetune --reading events` end to end on a tiny bundle: validation is scored, the export
    serves through the transformers engine, history items are left out, and free text bans event tokens."""
    from chatrec.bundle import Bundle
    from chatrec.recommender import Recommender
    from chatrec.testing import make_tiny_bundle
    from finetune.export import export_bundle
    from finetune.sequence import SequenceConfig, train_sequences

    bundle = make_tiny_bundle(tmp_path / "b", n_items=60, n_users=24)
    counts = train_sequences(bundle, SequenceConfig(reading="events", max_steps=25, batch_size=8, rows_steps=5,
                                                    warmup_steps=3, eval_users=10, bf16="off", num_threads=2),
                             quiet=True)
    assert counts["reading"] == "events" and counts["steps"] == 25 and counts["final_loss"] < counts["first_loss"]
    assert 0.0 <= counts["valid_ndcg@10"] <= 1.0 and counts["valid_users"] == 10
    export_bundle(bundle)
    rec = Recommender.from_bundle(Bundle(bundle.root), engine="transformers")
    try:
        history = [("i3", "like"), ("i7", "dislike"), ("i11", "like")]
        history = [(str(rec.catalog["item_id"].iloc[j]), a) for j, (_, a) in zip((3, 7, 11), history, strict=True)]
        got = rec.recommend(history, k=5)
        assert len(got) == 5 and not {r.item_id for r in got} & {h[0] for h in history}
        assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)
        lo, hi = rec.token_map.event_range
        assert hi - lo == len(rec.token_map.events["actions"]) * 60
        assert set(range(lo, hi)) <= set(rec.core.banned.tolist())
        assert len(rec.event_prompt(history)) == 3
    finally:
        rec.close()


def test_the_item_bias_trains_and_the_tail_average_is_served(tmp_path: Path) -> None:
    """`events_item_bias` trains a logit offset per item, and `average_from` serves the mean of the tail's
    weights: the last step's model is kept (and scored) as the snapshot `seq-last`, and differs from it."""
    import torch
    from safetensors.torch import load_file

    from chatrec.testing import make_tiny_bundle
    from finetune.sequence import LAST, SequenceConfig, train_sequences

    bundle = make_tiny_bundle(tmp_path / "b", n_items=60, n_users=24)
    cfg = SequenceConfig(reading="events", max_steps=20, batch_size=8, rows_steps=5, warmup_steps=3, eval_users=10,
                         bf16="off", num_threads=2, events_item_bias=True, average_from=0.5, events_popularity=0.0)
    counts = train_sequences(bundle, cfg, quiet=True)
    assert counts["averaged_steps"] == 10  # steps 11-20: the second half
    manifest = bundle.stage("finetune")
    assert manifest is not None and 0.0 <= manifest["snapshots"][LAST]["ndcg@10"] <= 1.0
    mean = load_file(str(bundle.path("trained") / "model.safetensors"))
    last = load_file(str(bundle.path("checkpoints") / LAST / "model.safetensors"))
    assert mean.keys() == last.keys()
    assert any(not torch.equal(mean[k], last[k]) for k in mean)


def test_the_popularity_prior_is_chosen_on_validation_and_served(tmp_path: Path) -> None:
    """Training ends by choosing the prior's weight on the validation users (the best NDCG@10 of the
    grid); `calibrate` with a given weight replaces it (never stacks), and the served ranking follows it:
    a weight that drowns the model ranks by training popularity."""
    import pandas as pd

    from chatrec.bundle import Bundle
    from chatrec.evaluation import TRAINED_PROTOCOL, make_split
    from chatrec.recommender import Recommender
    from chatrec.testing import make_tiny_bundle
    from finetune.events import EVENT_BIAS, POPULARITY_WEIGHTS, calibrate, item_popularity
    from finetune.export import export_bundle
    from finetune.sequence import TRAINED, SequenceConfig, train_sequences
    from tokenizer_ext import TokenMap

    bundle = make_tiny_bundle(tmp_path / "b", n_items=60, n_users=24)
    counts = train_sequences(bundle, SequenceConfig(reading="events", max_steps=10, batch_size=8, rows_steps=2,
                                                    warmup_steps=2, eval_users=12, bf16="off", num_threads=2),
                             quiet=True)
    by_weight = {float(w): v for w, v in counts["valid_ndcg@10_by_popularity_weight"].items()}
    assert sorted(by_weight) == list(POPULARITY_WEIGHTS)
    chosen = counts["popularity_weight"]
    assert by_weight[chosen] == max(by_weight.values()) == counts["valid_ndcg@10_served"]
    assert all(w >= chosen for w, v in by_weight.items() if v == by_weight[chosen])  # ties: the smaller

    folder = bundle.path(TRAINED)
    catalog = pd.read_parquet(bundle.root / "catalog.parquet")
    inter = pd.read_parquet(bundle.root / "interactions.parquet")
    prior = item_popularity(make_split(inter, TRAINED_PROTOCOL).train, catalog["item_id"].astype(str).tolist())
    trained_bias = np.load(folder / EVENT_BIAS) - chosen * prior
    for weight in (0.5, 0.5, 100.0):
        assert calibrate(Bundle(bundle.root), weight=weight)["popularity_weight"] == weight
        np.testing.assert_allclose(np.load(folder / EVENT_BIAS), trained_bias + weight * prior, atol=1e-4)
        assert TokenMap.load(folder).events["popularity_weight"] == weight

    export_bundle(bundle)
    rec = Recommender.from_bundle(Bundle(bundle.root), engine="transformers")
    try:
        ids = catalog["item_id"].astype(str).tolist()
        history = [(ids[3], "like"), (ids[7], "like")]
        got = [r.item_id for r in rec.recommend(history, k=5)]
        pop = dict(zip(ids, prior.tolist(), strict=True))
        best = sorted((v for i, v in pop.items() if i not in {ids[3], ids[7]}), reverse=True)[:5]
        assert [pop[i] for i in got] == pytest.approx(best)  # the 5 most popular items the user has not seen
    finally:
        rec.close()
