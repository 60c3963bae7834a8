"""The events reading of the sequence recipe: one trunk position per event, one softmax over the items.

The token reading (`finetune.sequence`) spells every event as `ACTION s0 s1 s2` and predicts each next
token, so a pass costs 4 trunk positions an event. Here the same trunk (the extended model's bottom
`keep_layers` layers) reads each event as ONE position, its action row plus its item's vector (summed,
halved to keep the rows' scale), and scores the next item with a softmax over the whole catalog. An item's
vector is the sum of its SID code rows plus a residual of its own that starts at zero, the same vector in
the input rows and the output head as SASRec ties them (`events_item_input`; without the residual in the
input rows an item is read only through its codes: 0.95 x on ML-1M validation); a learned vector per
action shifts the last hidden state, so the model is asked for the item the user will take the next
event's action on (at serving time: the positive action). The loss
is SASRec's full-catalog cross-entropy, over SASRec's windows (up to `events_max_len` events, every event
after a user's first a target once per pass). On ML-1M validation this read 1.5 x the token reading at
the same CPU (BENCHMARKS.md, "One position per event").

Served without new engine code: the trained model is written out ("materialised") as an ordinary causal
LM whose vocabulary has one token per (action, item), `<|ev_ACTION_INDEX|>`, with an untied head: the
input row of `<|ev_a_i|>` is the event's embedding, its output row item i's vector, and the action shift
becomes a per-item bias (`event_bias.npy`, since (h + s_a) . m_i = h . m_i + s_a . m_i; with
`events_item_bias` the trained per-item logit offset is added to it). A history is
then a prompt of one token per event, and retrieval is one prefill: the next-token log-probabilities of
the positive action's event tokens, plus the bias (`chatrec.recommender.Recommender`). Free text never
emits an event token (they are banned outside SID spans like the code tokens).

The softmax also has a trained logit offset per item (`events_item_bias`), and the model served is the
mean of the weights over the run's second half (`average_from`; the last step's weights stay in
`checkpoints/seq-last/`): on ML-1M validation the tail's mean scored 1.03 x the same run's last step.

The served bias also holds a popularity prior, w x log(1 + the item's training events), whose weight
`calibrate` chooses on the validation users at the end of training (`events_popularity`; the trained
ranking alone under-weighs popular items on ML-1M validation, every seed: BENCHMARKS.md, "A popularity
prior chosen on validation").

What this reading does not do (yet): chat steps (a request with words is served by the SID beam search
over rows that were trained only inside event embeddings), LoRA, resuming, several
processes. `SequenceConfig.__post_init__` refuses the settings that would be silently ignored.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatrec.bundle import Bundle, atomic_path
from chatrec.errors import BundleError, ConfigError, DataError

if TYPE_CHECKING:
    from finetune.sequence import SequenceConfig

WIDTH_MULTIPLE = 16  # training windows are padded to a multiple of this many events
EVENT_BIAS = "event_bias.npy"  # [actions, items] float32: s_a . m_i (+ the popularity prior), added to log-probs
# the weights of the log training popularity `calibrate` chooses among on validation users (0 = none)
POPULARITY_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


# data -----------------------------------------------------------------------------------------
def user_sequences(train: Any, index: dict[str, int], actions: dict[str, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's (item indices, action indices), oldest first (log order kept on ties), users with >= 2 events."""
    frame = train.assign(_row=np.arange(len(train))).sort_values(["user_id", "timestamp", "_row"], kind="stable")
    frame = frame[frame["item_id"].astype(str).isin(index.keys()) & frame["action"].astype(str).isin(actions.keys())]
    items = frame["item_id"].astype(str).map(index).to_numpy()
    acts = frame["action"].astype(str).map(actions).to_numpy()
    users = frame["user_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True]) if len(frame) else np.array([0])
    return [(items[a:b].astype(np.int64), acts[a:b].astype(np.int64))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b - a >= 2]


def windows(seqs: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """SASRec's cut: from each sequence's end, windows of `max_len` + 1 events overlapping by one, so
    every event after a user's first is a target exactly once per pass."""
    out = []
    for items, acts in seqs:
        end = len(items)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append((items[start:end], acts[start:end]))
            if start == 0:
                break
            end = start + 1
    return out


def padded(rows: Sequence[tuple[np.ndarray, np.ndarray]], multiple: int = 1) -> tuple[Any, Any, Any]:
    """Right-padded [B, T] item indices, action indices and attention mask, T a multiple of `multiple`."""
    import torch

    width = max(len(r[0]) for r in rows)
    width = -(-width // multiple) * multiple
    items = torch.zeros(len(rows), width, dtype=torch.long)
    acts = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, (it, ac) in enumerate(rows):
        items[j, :len(it)] = torch.from_numpy(np.asarray(it, dtype=np.int64))
        acts[j, :len(ac)] = torch.from_numpy(np.asarray(ac, dtype=np.int64))
        mask[j, :len(it)] = 1
    return items, acts, mask


# the model ------------------------------------------------------------------------------------
def _module_base() -> type:
    import torch

    return torch.nn.Module


class EventsModel(_module_base()):  # type: ignore[misc]
    """The trunk of a `RowsModel` reading one position per event and scoring every catalog item."""

    def __init__(self, rm: Any, code_rows: Any, action_rows: Any, dropout: float, bf16: bool = False,
                 item_input: bool = False, item_bias: bool = False):
        import torch

        super().__init__()
        self.rm = rm
        self.register_buffer("code_rows", code_rows, persistent=False)  # [I, L] indices into rm.new_rows
        self.register_buffer("action_rows", action_rows, persistent=False)  # [A]
        hidden = rm.model.config.hidden_size
        self.residual = torch.nn.Parameter(torch.zeros(code_rows.shape[0], hidden))  # [I, H]
        self.shift = torch.nn.Parameter(torch.zeros(action_rows.shape[0], hidden))  # [A, H]
        # [I]: a trained logit offset per item (frozen at zero without `item_bias`)
        self.item_bias = torch.nn.Parameter(torch.zeros(code_rows.shape[0]), requires_grad=item_bias)
        self.dropout = dropout
        self.bf16 = bf16
        self.item_input = item_input  # the input row = (item vector + action row) / 2, tied to the output

    def event_embeddings(self, items: Any, acts: Any) -> Any:  # [B, T] -> [B, T, H]
        rows = self.rm.new_rows
        item = rows[self.code_rows[items]].sum(-2)
        if self.item_input:
            item = item + self.residual[items]
        return (item + rows[self.action_rows[acts]]) / 2

    def item_matrix(self) -> Any:  # [I, H]
        return self.rm.new_rows[self.code_rows].sum(-2) + self.residual

    def hidden(self, items: Any, acts: Any, mask: Any) -> Any:
        import torch
        import torch.nn.functional as F

        training = self.training and self.dropout > 0
        x = F.dropout(self.event_embeddings(items, acts), self.dropout, training)
        with torch.autocast("cpu" if x.device.type == "cpu" else x.device.type, dtype=torch.bfloat16,
                            enabled=self.bf16):
            h = self.rm.model.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return F.dropout(h.float(), self.dropout, training)

    def forward(self, items: Any, acts: Any, mask: Any) -> tuple[Any, int]:
        """Mean cross-entropy of every next item (given its action) over the catalog, and the target count."""
        import torch.nn.functional as F

        h = self.hidden(items, acts, mask)
        keep = mask[:, 1:] > 0
        pred = h[:, :-1][keep] + self.shift[acts[:, 1:][keep]]
        logits = pred @ self.item_matrix().T + self.item_bias
        return F.cross_entropy(logits, items[:, 1:][keep]), int(keep.sum())

    def scores(self, items: Any, acts: Any, mask: Any, action: int) -> Any:
        """[B, I] scores of every item as the next event with `action`, after each row's last event."""
        import torch

        h = self.hidden(items, acts, mask)
        last = h[torch.arange(h.shape[0]), mask.sum(1) - 1] + self.shift[action]
        return last @ self.item_matrix().T + self.item_bias

    @property
    def trunk(self) -> list[Any]:
        return list(self.rm.trunk)


def event_token(action: str, index: int) -> str:
    return f"<|ev_{action}_{index}|>"


def materialise(em: Any, tokenizer: Any, token_map: Any, item_ids: Sequence[str], actions: Sequence[str],
                max_len: int, source_dir: Path, target: Path) -> Path:
    """Write the events model as a serveable causal-LM folder (atomically): one added token per (action,
    item), their input rows the event embeddings and output rows (untied head) the item vectors;
    `chatrec_tokens.json` records them, `event_bias.npy` holds each action's per-item bias."""
    import copy

    import torch

    from finetune.export import SIDECAR_FILES

    model = copy.deepcopy(em.rm.write_back())  # the trained code/action/span rows in the tied embedding
    tokenizer = copy.deepcopy(tokenizer)
    base = len(tokenizer)
    names = [event_token(a, i) for a in actions for i in range(len(item_ids))]
    tokenizer.add_tokens(names, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(base, base + len(names))):
        raise BundleError(f"{source_dir}: the event tokens did not get the ids after the vocabulary's last")
    with torch.no_grad():
        items = torch.arange(len(item_ids))
        event_in = torch.cat([em.event_embeddings(items, torch.full_like(items, a)) for a in range(len(actions))])
        mat = em.item_matrix().float()
        event_out = mat.repeat(len(actions), 1)  # every action's token of item i predicts item i
        bias = (em.shift.float() @ mat.T + em.item_bias.float()).numpy().astype(np.float32)  # [A, I]
        emb = model.get_input_embeddings().weight.detach()[:base]
        hidden = emb.shape[1]
        size = base + len(names)
        inputs = torch.nn.Embedding(size, hidden)
        inputs.weight.copy_(torch.cat([emb, event_in.to(emb.dtype)]))
        head = torch.nn.Linear(hidden, size, bias=False)
        head.weight.copy_(torch.cat([emb, event_out.to(emb.dtype)]))
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    model.set_input_embeddings(inputs)
    model.set_output_embeddings(head)
    model.config.vocab_size = size
    tm = copy.deepcopy(token_map)
    tm.vocab_size = len(tokenizer)
    tm.events = {"first": base, "actions": list(actions), "item_ids": [str(i) for i in item_ids], "max_len": max_len}
    with atomic_path(target) as tmp:
        model.to(torch.float32).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name in SIDECAR_FILES:
            if name != "chatrec_tokens.json" and (source_dir / name).exists():
                shutil.copy2(source_dir / name, tmp / name)
        tm.save(tmp / "chatrec_tokens.json")
        np.save(tmp / EVENT_BIAS, bias)
    return target


# calibration ----------------------------------------------------------------------------------
def item_popularity(train: Any, item_ids: Sequence[str]) -> np.ndarray:
    """log(1 + the item's events in the training split), per item: the prior `calibrate` weighs."""
    counts = train["item_id"].astype(str).value_counts()
    return np.log1p(np.array([counts.get(i, 0) for i in item_ids], dtype=np.float64)).astype(np.float32)


def validation_cases(split: Any, index: dict[str, int], action_index: dict[str, int], n: int, seed: int) -> list[Any]:
    """The seeded validation users `chatrec finetune` scores (`benchmarks/score_gains.py --cases valid
    --max-users N` scores the same, so runs pair by user), those with an event the model knows."""
    from chatrec.evaluation import sample_cases

    return [c for c in sample_cases(split.valid, n, seed) if any(
        i in index and a in action_index for i, a in zip(c.items, c.actions, strict=True))] if n else []


def trained_split(bundle: Bundle, catalog: Any) -> tuple[Any, Any, list[str]]:
    """The bundle's interactions, the split the events model trains on, and the build's positive actions
    present in the log (may be empty: the split then targets `like`)."""
    import pandas as pd

    from chatrec.evaluation import TRAINED_PROTOCOL, make_split

    inter = pd.read_parquet(bundle.require("interactions.parquet"))
    build = (bundle.stage("build") or {}).get("config") or {}
    present = set(inter["action"].astype(str))
    positive = [a for a in build.get("positive_actions", ("like",)) if a in present]
    return inter, make_split(inter, TRAINED_PROTOCOL, target_actions=positive or ("like",), known_items=catalog.ids), positive


def case_ranks(scores: np.ndarray, cases: Sequence[Any], index: dict[str, int], k: int) -> list[int | None]:
    """Each case's target rank in the top-`k` of its row of `scores`, items in its input excluded."""
    from chatrec import metrics

    seen = np.zeros(scores.shape, dtype=bool)
    for j, c in enumerate(cases):
        seen[j, [index[i] for i in c.items if i in index]] = True
    return [metrics.target_rank(top.tolist(), index.get(c.target, -1))
            for top, c in zip(metrics.top_k_from_scores(scores, k, seen), cases, strict=True)]


def calibrate(bundle: Bundle, *, weight: float | None = None, eval_users: int = 3000, seed: int = 0, k: int = 10,
              batch: int = 32) -> dict[str, Any]:
    """Set the popularity prior of the events model in BUNDLE/trained/: its event bias becomes the trained
    one plus `weight` x log(1 + the item's training events), the weight (unless given) the one of
    POPULARITY_WEIGHTS whose ranking of the served model scores the best NDCG@k on `eval_users` seeded
    validation users (ties: the smaller). Scores the materialised model itself, so what is chosen is what
    `chatrec serve` ranks; run `chatrec export` after it."""
    import pandas as pd

    from chatrec.evaluation import Catalog

    catalog = Catalog(pd.read_parquet(bundle.require("catalog.parquet")))
    _, split, positive = trained_split(bundle, catalog)
    return _calibrate(bundle, catalog, split, positive, weight=weight, eval_users=eval_users, seed=seed, k=k,
                      batch=batch)


def _calibrate(bundle: Bundle, catalog: Any, split: Any, positive: Sequence[str], *, weight: float | None,
               eval_users: int, seed: int, k: int, cases: Sequence[Any] | None = None, batch: int = 32
               ) -> dict[str, Any]:
    """`calibrate` on an already loaded catalog and split (`cases`, when given, are the validation users)."""
    import torch
    from transformers import AutoModelForCausalLM

    from chatrec import metrics
    from finetune.sequence import TRAINED
    from tokenizer_ext.token_map import TokenMap

    folder = bundle.path(TRAINED)
    if not (folder / EVENT_BIAS).exists():
        raise BundleError(f"{folder} holds no model finetuned with `--reading events` (no {EVENT_BIAS}); "
                          "the popularity prior is for that reading only")
    tm = TokenMap.load(folder)
    ev = tm.events or {}
    if list(ev.get("item_ids", ())) != catalog.ids:
        raise BundleError(f"{folder}: its event tokens are not the catalog's items ({bundle.root / 'catalog.parquet'})")
    prior = item_popularity(split.train, catalog.ids)
    bias = np.load(folder / EVENT_BIAS)
    base = bias - float(ev.get("popularity_weight", 0.0)) * prior  # the trained bias, whatever was added before
    action_index = {a: i for i, a in enumerate(ev["actions"])}
    action = next((action_index[a] for a in positive or ["like"] if a in action_index), 0)
    scores: dict[float, float] = {}
    if weight is None:
        if cases is None:
            cases = validation_cases(split, catalog.index, action_index, eval_users, seed)
        if not cases:
            raise ConfigError("choosing the popularity weight needs validation users (eval_users > 0), "
                              "or give the weight")
        first, n, max_len = int(ev["first"]), len(catalog), int(ev.get("max_len", 200))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        rows = model.get_output_embeddings().weight[first + action * n:first + (action + 1) * n].detach()
        table = np.empty((len(cases), n), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(cases), batch):
                chunk = cases[s:s + batch]
                items, acts, mask = padded([event_rows(c.items, c.actions, catalog.index, action_index, max_len)
                                            for c in chunk])
                ids = first + acts * n + items  # each event's token (right padding is masked)
                h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
                last = h[torch.arange(len(chunk)), mask.sum(1) - 1]
                table[s:s + len(chunk)] = (last @ rows.T).numpy() + base[action]
        for w in POPULARITY_WEIGHTS:
            scores[w] = metrics.ndcg(case_ranks(table + w * prior, cases, catalog.index, k), k)
        weight = max(POPULARITY_WEIGHTS, key=lambda w: (scores[w], -w))
    if weight < 0:
        raise ConfigError(f"the popularity weight must be >= 0, got {weight}")
    with atomic_path(folder / EVENT_BIAS) as tmp, open(tmp, "wb") as f:
        np.save(f, (base + weight * prior).astype(np.float32))
    tm.events = {**ev, "popularity_weight": float(weight)}
    tm.save(folder / "chatrec_tokens.json")
    out: dict[str, Any] = {"popularity_weight": float(weight), "users": len(cases or ()),
                           **({f"valid_ndcg@{k}_by_weight": {str(w): v for w, v in scores.items()}} if scores else {})}
    bundle.record_stage("calibrate", config={"weight": weight, "eval_users": eval_users, "seed": seed, "k": k},
                        outputs={"trained": folder}, counts={"popularity_weight": float(weight), "users": out["users"]},
                        extra=out)
    return out


# training -------------------------------------------------------------------------------------
def train_events(bundle: Bundle, cfg: SequenceConfig, *, quiet: bool = False) -> dict[str, Any]:
    """`chatrec finetune --reading events`: train the events model on the bundle's training split (the
    split `chatrec data build` holds out validation and test targets from) into `BUNDLE/trained/`, with
    serveable snapshots at `save_minutes` and validation NDCG@K / HR@K on `eval_users` users."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from chatrec.evaluation import Catalog
    from finetune.sequence import (
        CHECKPOINTS,
        LAST,
        TRAINED,
        TRIM_EVERY,
        in_averaged_tail,
        lr_factor,
        optimizer_groups,
        peak_memory_mb,
        recipe_model,
        release_free_memory,
        snapshot_name,
        use_bf16,
        window_order,
    )
    from finetune.train_state import TailAverage

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model_dir = bundle.require("model")
    source = Path(cfg.init_model) if cfg.init_model else model_dir
    if (source / EVENT_BIAS).exists():
        raise ConfigError(f"{source} was finetuned with `--reading events`; continuing such a model on new logs "
                          "is not built yet (finetune BUNDLE/model again with the new logs merged in)")
    catalog = Catalog(pd.read_parquet(bundle.require("catalog.parquet")))
    inter, split, positive = trained_split(bundle, catalog)
    sids = pd.read_parquet(bundle.require("sids.parquet"))
    rm, _peft, tokenizer, token_map = recipe_model(source, cfg)
    action_names = sorted(a for a in token_map.actions if a in set(inter["action"].astype(str)))
    if not action_names:
        raise DataError(f"{bundle.interactions_path}: no action of the log has a token in {source}")
    action_index = {a: i for i, a in enumerate(action_names)}
    codes_of = dict(zip(sids["item_id"].astype(str), sids["codes"], strict=True))
    missing = [i for i in catalog.ids if i not in codes_of]
    if missing:
        raise BundleError(f"{bundle.root / 'sids.parquet'}: {len(missing)} catalog items have no SID "
                          f"(first: {missing[0]!r}); run `chatrec sids fit` again")
    first = rm.first
    code_rows = torch.tensor([[token_map.code_id(level, int(c)) - first for level, c in enumerate(codes_of[i])]
                              for i in catalog.ids])
    action_rows = torch.tensor([token_map.action_id(a) - first for a in action_names])
    bf16 = use_bf16(cfg.bf16, "cpu")
    em = EventsModel(rm, code_rows, action_rows, cfg.dropout or 0.0, bf16, cfg.events_item_input,
                     cfg.events_item_bias)
    max_len = cfg.events_max_len
    wins = windows(user_sequences(split.train, catalog.index, action_index), max_len)
    if not wins:
        raise DataError(f"{bundle.interactions_path}: no training user has two events")
    targets_per_pass = sum(len(w[0]) - 1 for w in wins)
    positive_action = next((action_index[a] for a in positive if a in action_index), 0)
    groups = optimizer_groups(rm, cfg)  # the recipe's; the item vectors and action shifts train as rows
    groups[0]["params"] = [*groups[0]["params"], em.residual, em.shift,
                           *([em.item_bias] if cfg.events_item_bias else [])]
    trained_params = [p for g in groups for p in g["params"]]
    average = TailAverage(trained_params)  # `average_from`: serve the tail's mean
    opt = torch.optim.AdamW(groups)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    planned = cfg.max_steps or (None if budget else math.ceil(cfg.epochs * len(wins) / cfg.batch_size))
    order = window_order(len(wins), cfg.seed, [len(w[0]) for w in wins], cfg.batch_size)  # length-grouped
    ckpt_root = bundle.path(CHECKPOINTS)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    ckpt_root.mkdir(parents=True)
    pending = sorted(cfg.save_minutes)
    snapshots: dict[str, Any] = {}
    # the seeded users `benchmarks/score_gains.py --cases valid --max-users N` scores, so runs pair by user
    cases = validation_cases(split, catalog.index, action_index, cfg.eval_users, cfg.seed)

    def save(target: Path) -> Path:
        em.eval()
        out = materialise(em, tokenizer, token_map, catalog.ids, action_names, max_len, model_dir, target)
        em.train()
        return out

    def validate() -> dict[str, float]:
        return score_cases(em, cases, catalog.index, action_index, positive_action, max_len, cfg.eval_k) if cases else {}

    step, trained_s, targets, losses = 0, 0.0, 0, []
    em.train()
    bar = tqdm(total=planned or int(budget or 0), unit="step" if planned else "s", desc="finetune (events)",
               disable=quiet, file=sys.stderr)
    while not ((planned is not None and step >= planned) or (budget is not None and trained_s >= budget)):
        t0 = time.perf_counter()
        done = step / planned if planned else trained_s / budget  # type: ignore[operator]
        for g in opt.param_groups:
            g["lr"] = g["peak"] * lr_factor(done, step, cfg.warmup_steps)
        # few distinct widths, and freed heap returned to the OS every TRIM_EVERY steps: without either,
        # resident memory grew to 6.3 GiB in a 20-minute ML-1M run (windows of every length up to 201)
        items, acts, mask = padded([wins[next(order)] for _ in range(cfg.batch_size)], WIDTH_MULTIPLE)
        loss, n = em(items, acts, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step < cfg.rows_steps:  # first stage: the added rows (and item vectors) alone
            for p in em.trunk:
                p.grad = None
        opt.step()
        step += 1
        if in_averaged_tail(cfg, done, step):
            average.update()
        if step % TRIM_EVERY == 0:
            release_free_memory()
        targets += n
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise DataError(f"the loss diverged at step {step} (learning rate {cfg.learning_rate:g})")
        trained_s += time.perf_counter() - t0
        bar.update(1 if planned else int(trained_s) - bar.n)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", passes=f"{targets / targets_per_pass:.2f}")
        while pending and trained_s >= pending[0] * 60:
            minutes = pending.pop(0)
            name = snapshot_name(minutes)
            save(ckpt_root / name)
            snapshots[name] = {"minutes": minutes, "step": step, **validate()}
    bar.close()
    if average.count:  # keep the last step's weights (and their validation) for comparison, serve the mean
        save(ckpt_root / LAST)
        snapshots[LAST] = {"minutes": round(trained_s / 60, 2), "step": step, **validate()}
        average.copy_to_params()
    em.eval()
    trained = save(bundle.path(TRAINED))
    metrics = validate()
    # the served bias's popularity prior: chosen on the same validation users (none without them)
    calibration: dict[str, Any] = _calibrate(
        bundle, catalog, split, positive, weight=cfg.events_popularity, eval_users=cfg.eval_users, seed=cfg.seed,
        k=cfg.eval_k, cases=cases) if (cases or cfg.events_popularity is not None) else {"popularity_weight": 0.0}
    by_weight: dict[str, float] = calibration.get(f"valid_ndcg@{cfg.eval_k}_by_weight", {})
    counts: dict[str, Any] = {
        "recipe": "sequence", "reading": "events", "lora": False, "processes": 1, "windows": len(wins),
        "chat_rows": 0, "steps": step, "layers": rm.model.config.num_hidden_layers, "bf16": bf16,
        "train_minutes": round(trained_s / 60, 2),
        "trained_params": sum(p.numel() for p in trained_params), "averaged_steps": average.count,
        "first_loss": losses[0] if losses else float("nan"), "final_loss": float(np.mean(losses[-200:])),
        "targets": targets, "targets_per_s": targets / trained_s if trained_s else 0.0,
        "events_per_s": targets / trained_s if trained_s else 0.0,
        "epochs_seen": targets / targets_per_pass, "events_max_len": max_len, "actions": action_names,
        "peak_rss_mb": peak_memory_mb(), **{f"valid_{k}": v for k, v in metrics.items()},
        "popularity_weight": calibration["popularity_weight"],
        **({f"valid_ndcg@{cfg.eval_k}_served": by_weight[str(calibration["popularity_weight"])],
            f"valid_ndcg@{cfg.eval_k}_by_popularity_weight": by_weight} if by_weight else {}),
    }
    bundle.record_stage("finetune", config=cfg, inputs={"interactions.parquet": bundle.interactions_path,
                                                        "model": source},
                        outputs={"trained": trained}, counts=counts, extra={"snapshots": snapshots})
    return counts


def score_cases(em: Any, cases: Sequence[Any], index: dict[str, int], action_index: dict[str, int], action: int,
                max_len: int, k: int, batch: int = 64) -> dict[str, float]:
    """NDCG@k and HR@k of the in-memory model on evaluation cases (history items excluded)."""
    import torch

    from chatrec import metrics

    ranks: list[int | None] = []
    was = em.training
    em.eval()
    with torch.no_grad():
        for s in range(0, len(cases), batch):
            chunk = cases[s:s + batch]
            rows = [event_rows(c.items, c.actions, index, action_index, max_len) for c in chunk]
            ranks += case_ranks(em.scores(*padded(rows), action).numpy(), chunk, index, k)
    em.train(was)
    return {f"ndcg@{k}": metrics.ndcg(ranks, k), f"hr@{k}": metrics.hit_rate(ranks, k), "users": float(len(cases))}


def event_rows(items: Sequence[str], actions: Sequence[str], index: dict[str, int], action_index: dict[str, int],
               max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, action indices) of the last `max_len` events the model knows (at least one)."""
    pairs = [(index[i], action_index[a]) for i, a in zip(items, actions, strict=True)
             if i in index and a in action_index][-max_len:]
    if not pairs:
        raise DataError("a history with no event the model knows")
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
