"""The LoRA recipe on a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatrec.bundle import Bundle
from chatrec.errors import BundleError, ConfigError
from finetune.data import BuildConfig, build_bundle, read_jsonl
from finetune.recipe import FinetuneConfig, batch_indices, finetune, read_log

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path) -> Bundle:
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3))
    return b


def _quick(**kw) -> FinetuneConfig:
    base = dict(batch_size=4, learning_rate=5e-3, warmup_steps=2, lora_dropout=0.0, eval_users=0, save_every=0,
                num_threads=1, max_tokens=256)
    base.update(kw)
    return FinetuneConfig(**base)


def test_finetune_lowers_loss_and_writes_adapter(bundle):
    # next-item and action answers are mostly new tokens, the part a random tiny model can learn fast
    counts = finetune(bundle, _quick(max_steps=12, eval_users=4, learning_rate=1e-2,
                                     tasks=("next_item", "action")), quiet=True)
    losses = [r["loss"] for r in read_log(bundle) if "loss" in r]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0
    assert (bundle.adapter_dir / "adapter_model.safetensors").exists()
    cfg = json.loads((bundle.adapter_dir / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] and not cfg["modules_to_save"]
    assert counts["tokens_per_s"] > 0 and counts["peak_rss_mb"] > 0
    assert 0.0 <= counts["valid_hr@10"] <= 1.0 and counts["valid_n_users"] == 4
    assert bundle.stage("finetune")["counts"]["steps"] == 12


def test_data_order_is_a_pure_function_of_step():
    cfg = FinetuneConfig(batch_size=3, grad_accum=2, seed=5)
    a = [batch_indices(s, m, 10, cfg, world=1, rank=0) for s in range(4) for m in range(2)]
    b = [batch_indices(s, m, 10, cfg, world=1, rank=0) for s in range(4) for m in range(2)]
    assert a == b
    flat = [i for batch in a for i in batch]
    assert sorted(flat[:10]) == list(range(10))  # epoch 0 visits every row once
    # two processes split each step's rows without overlap
    r0 = batch_indices(1, 0, 10, cfg, world=2, rank=0)
    r1 = batch_indices(1, 0, 10, cfg, world=2, rank=1)
    assert not set(r0) & set(r1)


def test_rerun_without_resume_is_refused(bundle):
    finetune(bundle, _quick(max_steps=2), quiet=True)
    with pytest.raises(BundleError, match="--resume"):
        finetune(bundle, _quick(max_steps=2), quiet=True)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="lora_r"):
        FinetuneConfig(lora_r=0)
    with pytest.raises(ConfigError, match="tasks"):
        FinetuneConfig(tasks=("nope",))


def _cli(bundle: Bundle, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chatrec", "finetune", "--recipe", "lora", "--bundle", str(bundle.root), "--max-steps", "10",
            "--batch-size", "4", "--lr", "5e-3", "--lora-dropout", "0.05", "--eval-users", "0",
            "--save-every", "2", "--max-tokens", "256", "--threads", "1", "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def test_resume_after_kill_continues_with_same_steps_and_data_order(tmp_path, bundle):
    import shutil

    twin = Bundle(tmp_path / "twin")
    shutil.copytree(bundle.root, twin.root)
    # reference: one uninterrupted run
    subprocess.run(_cli(twin), check=True, env=_env(), cwd=REPO, timeout=600)
    ref = {r["step"]: r for r in read_log(twin) if "loss" in r}
    # killed run: SIGKILL once the step-4 checkpoint is on disk, then --resume
    proc = subprocess.Popen(_cli(bundle), env=_env(), cwd=REPO, start_new_session=True)
    ckpt = bundle.path("checkpoints", "step-000004", "state.json")
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    killed_at = max(r["step"] for r in read_log(bundle) if "loss" in r)
    assert killed_at < 10, "the run finished before it could be killed"
    subprocess.run(_cli(bundle, "--resume"), check=True, env=_env(), cwd=REPO, timeout=600)
    got = {r["step"]: r for r in read_log(bundle) if "loss" in r}
    assert sorted(got) == list(range(1, 11))
    assert bundle.stage("finetune")["counts"]["resumed_from"] >= 4
    for step in range(1, 11):
        assert got[step]["samples"] == ref[step]["samples"], step
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4, abs=1e-4), step


@pytest.mark.slow
def test_overfits_twenty_examples(tmp_path):
    """20 next-item examples, trained to >= 90% hit (HR@10 over constrained retrieval)."""
    from peft import PeftModel

    from chatrec.testing import make_tiny_bundle
    from finetune.recipe import evaluate
    from tokenizer_ext import load_extended

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3, task_weights={"next_item": 1.0}))
    finetune(b, _quick(max_steps=200, batch_size=20, max_train_samples=20, learning_rate=5e-3, warmup_steps=10,
                       tasks=("next_item",)), quiet=True)
    losses = [r["loss"] for r in read_log(b) if "loss" in r]
    assert losses[-1] < losses[0] - 5
    model, tok, token_map = load_extended(b.model_dir)
    model = PeftModel.from_pretrained(model, str(b.adapter_dir))
    rows = read_jsonl(b.train_dir / "train.jsonl")[:20]
    metrics = evaluate(model, tok, token_map, b, rows, k=10, exclude_history=False)
    assert metrics["hr@10"] >= 0.9, metrics


def test_dropout_is_active_while_training_only() -> None:
    import torch

    from chatrec.errors import ConfigError
    from chatrec.testing import smollm2_tokenizer, tiny_llama
    from finetune.sequence import RowsModel, SequenceConfig

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
    from finetune.sequence import RowsModel, sequence_backward

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

    import finetune.sequence as seq
    from chatrec.testing import smollm2_tokenizer, tiny_llama

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
        seq.SequenceConfig(head_rows_multiple=-1)


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
