"""The sequence recipe's model and losses: a causal LM whose added-token rows are their own parameter.

Imported lazily by `finetune.sequence` (this module imports torch at import time). `RowsModel` is a
`torch.nn.Module` whose `forward` returns the loss, so `accelerate` can wrap it in
DistributedDataParallel and the gradients of every trained tensor (the new rows, the kept layers or
their LoRA adapters) are all-reduced during `backward()`.

LoRA (`add_lora`) is peft's: adapters on the kept layers' attention and MLP projections; the trunk
stays frozen and the new rows are trained as in the full finetune (one small parameter beside the
frozen base rows). `merged_copy` folds the adapters into a copy of the weights for serving.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from chatrec.errors import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RowsModel(torch.nn.Module):
    """A causal LM whose added-token rows are one trainable parameter beside the frozen base rows.

    Inputs are embedded from `[base rows; new rows]`; `hidden()` returns the final-norm hidden
    states; `logits(h, full)` projects them on the new rows only or on the whole (tied) vocabulary;
    `forward()` is the mean cross-entropy at the supervised positions. `trunk` lists the other trained
    tensors: the kept layers' weights, or only their LoRA matrices when the model carries peft adapters.
    Requires the added tokens to be the last ids of the vocabulary (as `tokenizer extend` makes them).
    """

    def __init__(self, model: Any, first_new_id: int, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.model = model
        self.first = first_new_id
        self.dropout = dropout  # SASRec-style regularisation of the embeddings and the output states
        for layer in getattr(model.model, "layers", ()):
            if hasattr(layer.self_attn, "attention_dropout"):  # Llama-family attention reads it when training
                layer.self_attn.attention_dropout = attention_dropout
        emb = model.get_input_embeddings().weight  # [V, H]
        # a plain attribute, not a buffer: DDP would broadcast a registered 49k-row buffer every step
        self.base_rows = emb[:first_new_id].detach()
        self.new_rows = torch.nn.Parameter(emb[first_new_id:].detach().clone())  # [N, H]
        lora = any("lora_" in n for n, _ in model.named_parameters())
        for p in model.parameters():
            p.requires_grad_(False)
        self.lora = lora
        self.trunk = [p for n, p in model.named_parameters()
                      if ("lora_" in n if lora else "embed_tokens" not in n and "lm_head" not in n)]
        out = model.get_output_embeddings()
        self.tied = out is None or out.weight.data_ptr() == emb.data_ptr()
        if not self.tied:
            raise ConfigError("the sequence recipe needs a model with tied input/output embeddings (as SmolLM2 "
                              "and most small chat models); this model has a separate lm_head")

    def embed(self, ids: Any) -> Any:
        is_new = ids >= self.first
        base = F.embedding(torch.where(is_new, 0, ids), self.base_rows)
        new = F.embedding(torch.where(is_new, ids - self.first, 0), self.new_rows)
        return torch.where(is_new.unsqueeze(-1), new, base)  # [B, T, H]

    def hidden(self, ids: Any, attention_mask: Any) -> Any:
        training = self.model.training and self.dropout > 0
        x = F.dropout(self.embed(ids), self.dropout, training)
        out = self.model.model(inputs_embeds=x, attention_mask=attention_mask)
        return F.dropout(out.last_hidden_state, self.dropout, training)  # [B, T, H]

    def logits(self, h: Any, full: bool) -> Any:
        if not full:
            return h @ self.new_rows.T  # [P, N]
        return torch.cat([h @ self.base_rows.T, h @ self.new_rows.T], dim=-1)  # [P, V]

    def forward(self, ids: Any, attention_mask: Any, supervised: Any, full: bool,
                head_rows_multiple: int) -> Any:
        """Mean cross-entropy of the tokens after every supervised position t < T - 1 (t predicts t + 1),
        over the added rows (`full=False`, targets must be added tokens) or the whole vocabulary."""
        h = self.hidden(ids, attention_mask)  # [B, T, H]
        keep = supervised[:, 1:].bool()
        target = ids[:, 1:][keep]  # [P]
        if not full:
            target = target - self.first  # index into the new rows
        pred, padded = padded_targets(h[:, :-1][keep], target, head_rows_multiple)  # [P', H], P' >= P
        return F.cross_entropy(self.logits(pred, full).float(), padded)

    def write_back(self) -> Any:
        """The model with the trained rows written into its (tied) embedding."""
        with torch.no_grad():
            self.model.get_input_embeddings().weight[self.first:] = self.new_rows.detach()
        return self.model


def add_lora(model: Any, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> Any:
    """peft LoRA adapters on `targets` of `model`'s layers; returns the PeftModel (its base model is
    `model` itself, with the adapter layers injected in place)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged_copy(peft_model: Any) -> Any:
    """A plain HF model with the LoRA adapters folded in; the training model is left as it is."""
    return copy.deepcopy(peft_model).merge_and_unload()


# batches and losses -----------------------------------------------------------------------------
def padded_width(n: int, multiple: int = 64) -> int:
    """Batch width rounded up, so a run sees a few distinct shapes (CPU kernel caches and the allocator
    grow with every new shape: a 50-minute run without it crept from 2.7 to 4.9 GiB resident)."""
    return -(-n // multiple) * multiple


def right_padded(rows: Sequence[Sequence[int]], pad: int, device: str) -> tuple[Any, Any]:
    """Rows right-padded to `padded_width` with `pad`: (values [B, T], attention mask [B, T])."""
    width = padded_width(max(len(r) for r in rows))
    values = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        values[b, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        attn[b, :len(r)] = 1
    return values.to(device), attn.to(device)


def padded_targets(pred: Any, target: Any, multiple: int = 256) -> tuple[Any, Any]:
    """Supervised positions [P, H] and targets [P] padded to a multiple of `multiple` rows (zero
    states, targets ignored by the loss, so the mean loss and its gradient are unchanged). P differs
    every step; with a new row count per step the head's matmul took a new shape each time and
    resident memory crept up 0.6 GiB in 6 minutes (flat with padding; BENCHMARKS.md, Memory)."""
    extra = padded_width(int(pred.shape[0]), multiple) - int(pred.shape[0]) if multiple else 0
    if not extra:
        return pred, target
    return F.pad(pred, (0, 0, 0, extra)), F.pad(target, (0, extra), value=-100)


def micro_batches(windows: Sequence[Sequence[int]], micro_batch_size: int | None = None) -> list[Sequence[Sequence[int]]]:
    """The consecutive parts of `micro_batch_size` windows that `sequence_backward` runs (one part: None)."""
    size = micro_batch_size or len(windows)
    return [windows[i:i + size] for i in range(0, len(windows), size)]


def padded_tokens(windows: Sequence[Sequence[int]], micro_batch_size: int | None = None) -> int:
    """Token slots a batch fills once each micro-batch is right-padded (`right_padded`): real + padding."""
    return sum(len(part) * padded_width(max(len(w) for w in part)) for part in micro_batches(windows, micro_batch_size))


def sequence_loss(net: Any, windows: Sequence[Sequence[int]], pad_id: int, device: str,
                  head_rows_multiple: int = 256) -> tuple[Any, int]:
    """Mean cross-entropy of every next token of every window, over the added-token rows; (loss, targets).
    `net` is a `RowsModel` or its DistributedDataParallel wrapper."""
    ids, attn = right_padded(windows, pad_id, device)
    return net(ids, attn, attn, False, head_rows_multiple), sum(len(w) - 1 for w in windows)


def sequence_backward(net: Any, windows: Sequence[Sequence[int]], pad_id: int, device: str,
                      micro_batch_size: int | None = None, autocast: Any = None,
                      head_rows_multiple: int = 256, weight: float = 1.0,
                      no_sync: Any = None) -> tuple[Any, int]:
    """`sequence_loss` of `windows`, back-propagated in micro-batches of `micro_batch_size` windows:
    each part weighted by its share of the targets, so the gradient is the whole batch's (less
    activation memory at once). `weight` scales the gradient (a process's share of a data-parallel
    batch); `no_sync()` (DDP's) defers the all-reduce to the last part. Returns (the batch's mean
    loss, detached; targets)."""
    n_targets = sum(len(w) - 1 for w in windows)
    total = torch.zeros(())
    parts = micro_batches(windows, micro_batch_size)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        sync = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast if autocast is not None else contextlib.nullcontext():
                part_loss, part_targets = sequence_loss(net, part, pad_id, device, head_rows_multiple)
            (part_loss * (weight * part_targets / n_targets)).backward()
        total = total + part_loss.detach().float().cpu() * (part_targets / n_targets)
    return total, n_targets


def chat_targets(rows: Sequence[Any]) -> int:
    """Supervised next-token positions of rendered conversations (assistant tokens after the first)."""
    return sum(int(sum(r.loss_mask[1:])) for r in rows)


def chat_loss(net: Any, rows: Sequence[Any], pad_id: int, device: str,
              head_rows_multiple: int = 64) -> tuple[Any, int]:
    """Cross-entropy over the full vocabulary at the assistant tokens of rendered conversations."""
    ids, attn = right_padded([r.input_ids for r in rows], pad_id, device)
    mask, _ = right_padded([r.loss_mask for r in rows], 0, device)
    return net(ids, attn, mask, True, head_rows_multiple), chat_targets(rows)
