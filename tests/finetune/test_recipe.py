"""The sequence recipe's model, losses and loop on a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatrec.bundle import Bundle
from chatrec.errors import ConfigError
from finetune.data import BuildConfig, build_bundle, read_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path) -> Bundle:
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3))
    return b


def test_dropout_is_active_while_training_only() -> None:
    import torch

    from chatrec.errors import ConfigError
    from chatrec.testing import smollm2_tokenizer, tiny_llama
    from finetune.rows_model import RowsModel
    from finetune.sequence import SequenceConfig

    with pytest.raises(ConfigError, match="dropout"):
        SequenceConfig(dropout=1.0)
    tok = smollm2_tokenizer()
    model = tiny_llama(tok, layers=2)
    with pytest.raises(ConfigError, match="attention_dropout"):
        SequenceConfig(attention_dropout=-0.1)
    rm = RowsModel(model, first_new_id=len(tok) - 8, dropout=0.5, attention_dropout=0.25)
    assert all(layer.self_attn.attention_dropout == 0.25 for layer in model.model.layers)
    ids = torch.arange(10, 30)[None]
    attn = torch.ones_like(ids)
    model.train()
    assert not torch.equal(rm.hidden(ids, attn), rm.hidden(ids, attn))  # a fresh mask per call
    model.eval()
    assert torch.equal(rm.hidden(ids, attn), rm.hidden(ids, attn))


def test_micro_batches_give_the_whole_batch_gradient() -> None:
    import torch

    from chatrec.testing import smollm2_tokenizer, tiny_llama
    from finetune.rows_model import RowsModel, sequence_backward

    tok = smollm2_tokenizer()
    first = len(tok) - 8
    rng = torch.Generator().manual_seed(0)
    windows = [torch.randint(first, len(tok), (n,), generator=rng).tolist() for n in (9, 4, 12, 7, 2)]
    grads, losses = [], []
    for micro in (None, 2, 1):
        torch.manual_seed(0)
        rm = RowsModel(tiny_llama(tok, layers=2), first)
        for p in rm.trunk:
            p.requires_grad_(True)
        loss, n = sequence_backward(rm, windows, pad_id=0, device="cpu", micro_batch_size=micro)
        assert n == sum(len(w) - 1 for w in windows)
        grads.append(torch.cat([rm.new_rows.grad.flatten(), rm.trunk[0].grad.flatten()]))
        losses.append(float(loss))
    for g, value in zip(grads[1:], losses[1:], strict=True):
        torch.testing.assert_close(g, grads[0], atol=1e-5, rtol=1e-4)
        assert abs(value - losses[0]) < 1e-5


def test_supervised_rows_are_padded_to_few_shapes_without_changing_loss_or_gradient() -> None:
    """The head sees a multiple of 256 rows (a new row count per step made resident memory creep),
    and the padded rows add nothing: loss and gradients equal the unpadded cross-entropy's."""
    import torch
    import torch.nn.functional as F

    import finetune.rows_model as seq
    from chatrec.testing import smollm2_tokenizer, tiny_llama
    from finetune.sequence import SequenceConfig

    tok = smollm2_tokenizer()
    first = len(tok) - 8
    rng = torch.Generator().manual_seed(1)
    windows = [torch.randint(first, len(tok), (n,), generator=rng).tolist() for n in (9, 4, 12)]
    rows_seen: list[int] = []
    orig = seq.RowsModel.logits

    def spy(self, h, full):
        rows_seen.append(int(h.shape[0]))
        return orig(self, h, full)

    results = []
    for multiple in (256, 0):  # the default, and no padding
        torch.manual_seed(0)
        rm = seq.RowsModel(tiny_llama(tok, layers=2), first)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(seq.RowsModel, "logits", spy)
            loss, n = seq.sequence_loss(rm, windows, pad_id=0, device="cpu", head_rows_multiple=multiple)
        loss.backward()
        results.append((float(loss), rm.new_rows.grad.clone()))
    assert rows_seen == [256, n] and n == sum(len(w) - 1 for w in windows)
    assert abs(results[0][0] - results[1][0]) < 1e-6
    torch.testing.assert_close(results[0][1], results[1][1])
    pred, target = seq.padded_targets(torch.ones(300, 4), torch.arange(300), 256)
    assert pred.shape == (512, 4) and int((target == -100).sum()) == 212 and float(pred[300:].abs().sum()) == 0
    assert F.cross_entropy(torch.zeros(512, 300), target).isfinite()
    with pytest.raises(ConfigError, match="head_rows_multiple"):
        SequenceConfig(head_rows_multiple=-1)


@pytest.mark.parametrize(("budget_mb", "trims"), [(1.0, 3), (0.0, 0)])
def test_freed_memory_is_returned_whenever_resident_memory_passes_the_budget(
        tmp_path, monkeypatch: pytest.MonkeyPatch, budget_mb: float, trims: int) -> None:
    """Peak RSS of a long run stays near `trim_above_mb`: above it, every step hands freed heap back."""
    import finetune.sequence as seq
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3))
    calls: list[int] = []
    monkeypatch.setattr(seq, "release_free_memory", lambda: calls.append(1))
    seq.train_sequences(b, seq.SequenceConfig(max_steps=3, batch_size=4, keep_layers=1, rows_steps=1, warmup_steps=1,
                                              eval_users=0, bf16="off", num_threads=1, trim_above_mb=budget_mb),
                        quiet=True)
    assert len(calls) == trims  # 3 steps: never a multiple of TRIM_EVERY
    logged = [r["rss_mb"] for r in read_jsonl(b.path("checkpoints", seq.TRAIN_LOG))]
    assert len(logged) == 3 and all(r > budget_mb for r in logged)
    with pytest.raises(ConfigError, match="trim_above_mb"):
        seq.SequenceConfig(trim_above_mb=-1)


def test_served_weights_are_the_mean_of_the_tail_steps(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `average_from`, `trained/` holds the mean of the weights after each step of the run's tail,
    and `checkpoints/seq-last/` the last step's own weights."""
    import torch
    from safetensors.torch import load_file

    import finetune.sequence as seq
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3))
    seen: list[list[torch.Tensor]] = []
    update = seq.TailAverage.update

    def recording(self: seq.TailAverage) -> None:
        seen.append([p.detach().clone() for p in self.params])
        update(self)

    monkeypatch.setattr(seq.TailAverage, "update", recording)
    counts = seq.train_sequences(b, seq.SequenceConfig(max_steps=4, batch_size=4, keep_layers=1, rows_steps=0,
                                                       warmup_steps=1, learning_rate=1e-2, eval_users=0, bf16="off",
                                                       num_threads=1, average_from=0.5), quiet=True)
    assert counts["averaged_steps"] == len(seen) == 2  # progress 0.5 and 0.75 of 4 steps
    trained = load_file(str(b.path(seq.TRAINED, "model.safetensors")))
    last = load_file(str(b.path(seq.CHECKPOINTS, seq.LAST, "model.safetensors")))
    name = next(k for k in trained if "layers.0.mlp.down_proj" in k)
    position = next(i for i, p in enumerate(seen[-1]) if p.shape == last[name].shape and torch.equal(p, last[name]))
    torch.testing.assert_close(trained[name], (seen[0][position] + seen[1][position]) / 2)
    assert not torch.equal(seen[0][position], seen[1][position])
    with pytest.raises(ConfigError, match="average_from"):
        seq.SequenceConfig(average_from=1.0)


def test_length_grouped_order_pads_less_and_still_visits_every_window_each_epoch() -> None:
    """`group_by_length`: each epoch is still a permutation of all windows, each batch holds windows of
    similar length (far less padding than the plain shuffle), the batch order is not sorted, and the
    stream is a pure function of the seed (what `--resume` relies on)."""
    import itertools

    import numpy as np

    from finetune.rows_model import padded_tokens
    from finetune.sequence import window_order

    rng = np.random.default_rng(7)
    lengths = rng.integers(8, 800, size=1000).tolist()
    windows = [[1] * n for n in lengths]
    batch = 7

    def slots(order: list[int]) -> int:
        return sum(padded_tokens([windows[i] for i in order[b:b + batch]]) for b in range(0, len(order) - batch, batch))

    plain = list(itertools.islice(window_order(1000, 3), 2000))
    grouped = list(itertools.islice(window_order(1000, 3, lengths, batch), 2000))
    assert sorted(grouped[:1000]) == sorted(grouped[1000:]) == list(range(1000))
    assert grouped[:1000] != grouped[1000:]  # a fresh shuffle each epoch
    real = sum(lengths)
    assert real / slots(grouped[:1000]) > 0.9 > 0.75 > real / slots(plain[:1000])
    firsts = [lengths[grouped[b]] for b in range(0, 350, batch)]  # one pool: 50 batches
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    assert list(itertools.islice(window_order(1000, 3, lengths, batch), 2000)) == grouped


def test_training_log_counts_padded_slots_and_grouping_fills_them(bundle: Bundle) -> None:
    """Every logged step holds its real tokens and the token slots the padded batch filled."""
    import finetune.sequence as seq

    def fill(group: bool) -> float:
        seq.train_sequences(bundle, seq.SequenceConfig(max_steps=6, batch_size=2, keep_layers=1, rows_steps=1,
                                                       warmup_steps=1, eval_users=0, bf16="off", num_threads=1,
                                                       chat_share=0.0, group_by_length=group), quiet=True)
        rows = read_jsonl(bundle.path("checkpoints", seq.TRAIN_LOG))
        assert len(rows) == 6 and all(r["padded"] >= r["tokens"] > 0 for r in rows)
        return sum(r["tokens"] for r in rows) / sum(r["padded"] for r in rows)

    assert 0 < fill(False) <= fill(True) <= 1


def test_recipe_model_is_the_model_the_recipe_trains(bundle: Bundle) -> None:
    """`recipe_model` + `optimizer_groups` (what `train_sequences` and the benchmarks build) carry
    the config's depth, dropouts, LoRA choice and learning rates; every trained tensor needs grad."""
    from finetune.sequence import SequenceConfig, optimizer_groups, recipe_model

    cfg = SequenceConfig(keep_layers=1, attention_dropout=0.25, weight_decay=0.01, rows_learning_rate=3e-3,
                         rows_weight_decay=0.05)
    rm, peft_model, tokenizer, token_map = recipe_model(bundle.require("model"), cfg)
    assert peft_model is None and len(rm.model.model.layers) == rm.model.config.num_hidden_layers == 1
    assert rm.first == min(token_map.all_ids()) and rm.new_rows.shape[0] >= len(tokenizer) - rm.first  # rows padded
    assert rm.model.model.layers[0].self_attn.attention_dropout == 0.25
    assert rm.new_rows.requires_grad and rm.trunk and all(p.requires_grad for p in rm.trunk)
    rows, trunk = optimizer_groups(rm, cfg)
    assert (rows["lr"], rows["weight_decay"], trunk["lr"], trunk["weight_decay"]) == (3e-3, 0.05, cfg.learning_rate, 0.01)
    assert trunk["params"] == rm.trunk and rows["params"] == [rm.new_rows]

    lora = SequenceConfig(keep_layers=1, lora=True, lora_r=4)
    rm, peft_model, _, _ = recipe_model(bundle.require("model"), lora)
    assert peft_model is not None and rm.trunk and all("lora_" in n for n, p in rm.model.named_parameters()
                                                       if p.requires_grad)
    assert optimizer_groups(rm, lora)[1]["lr"] == lora.learning_rate
