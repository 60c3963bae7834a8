"""Continual finetune on new logs: `chatrec finetune --from BUNDLE --logs NEW_LOGS --out NEW_BUNDLE`.

1. The parent bundle is copied to NEW_BUNDLE (catalog, log, SIDs, model; not its checkpoints,
   training data or exports). Its manifest gets a `continual` stage naming the parent.
2. New log rows are validated (rejected rows go to `quarantine/` with file:line); items the
   catalog lacks must come with `--items` (catalog-shaped rows) and get SIDs from the frozen
   codebooks (`chatrec.sids.assign_bundle`) and, where their codes need them, new tokens
   (`tokenizer_ext.extend_bundle` re-extension: existing ids never move; `trie.npz` is rebuilt).
3. Training data is rebuilt with a global time cut at the first new event: training targets from
   the new period plus a `replay_fraction` of older ones; valid/test are the new period's held-out
   events per user.
4. Before: the parent is scored on the new period's test users. Training continues from the
   parent's trained model (LoRA already merged into it; copied in as the new bundle's `model/`, so
   re-extension and the trie apply to it) with the parent's finetune config (a `--lora` parent gets
   fresh adapters on top of its merged weights). After: the new model is scored on the same users.
   Both go into the `continual` stage record.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from chatrec.bundle import Bundle
from chatrec.errors import BundleError, ConfigError, DataError
from finetune.data import BuildConfig, build_bundle

COPIED = ("catalog.parquet", "interactions.parquet", "sids.parquet", "sids", "model", "manifest.json")


@dataclass
class ContinualConfig:
    """How a continual run mixes new and old data and what it measures."""

    replay_fraction: float = field(default=0.5, metadata={"help": "Older training samples replayed, as a fraction of the new ones."})
    eval_users: int = field(default=64, metadata={"help": "New-period test users scored before and after (0 = skip)."})
    eval_k: int = field(default=10, metadata={"help": "K of HR@K / NDCG@K."})

    def __post_init__(self) -> None:
        if not self.replay_fraction >= 0:
            raise ConfigError(f"`replay_fraction` must be >= 0, got {self.replay_fraction}")
        if self.eval_users < 0:
            raise ConfigError(f"`eval_users` must be >= 0, got {self.eval_users}")


def _config_from(record: dict[str, Any] | None, cls: type, **overrides: Any) -> Any:
    """The parent's stage config as a dataclass (unknown keys dropped), with overrides applied."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in ((record or {}).get("config") or {}).items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def log_files(logs: str | Path | Sequence[str | Path]) -> list[Path]:
    """One log file or several (a gateway replica's each, merged here)."""
    return [Path(logs)] if isinstance(logs, (str, Path)) else [Path(p) for p in logs]


def read_new_logs(logs: str | Path | Sequence[str | Path], out: Bundle) -> pd.DataFrame:
    """Validated new interactions of every file; rejected rows are written to `out/quarantine/`."""
    from chatrec.data.readers import read_table
    from chatrec.data.validate import validate_interactions, write_quarantine

    results = [(path, validate_interactions(read_table(path, "interactions"))) for path in log_files(logs)]
    # one call for every file: two logs of the same name (e.g. each replica's feedback.jsonl) get
    # two quarantine files, not one overwriting the other
    write_quarantine([r for _, r in results if r.rejected], out.path("quarantine"))
    for path, result in results:
        if result.frame.empty:
            raise DataError(f"{path}: no valid interaction rows ({len(result.rejected)} rejected; see "
                            f"{out.path('quarantine')})")
    frames = [r.frame for _, r in results]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def check_after_cut(new_logs: pd.DataFrame, parent_interactions: pd.DataFrame, logs: str | Path) -> None:
    """Refuse logs with events at or before the parent's last training event.

    The continual split trains on what is new since the earliest logged time; one event dated
    before the parent's cut (a client's clock, a hand-edited log) would turn all of the parent's
    later history into "new" data. The server stamps feedback with its own clock for this reason.
    """
    if parent_interactions.empty:
        return
    cut = pd.Timestamp(parent_interactions["timestamp"].max())
    times = pd.to_datetime(new_logs["timestamp"], utc=True)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    early = new_logs[times <= cut]
    if len(early):
        first = early.iloc[0]
        raise DataError(f"{logs}: {len(early)} events are dated at or before the parent bundle's last training event "
                        f"({cut.isoformat()}), e.g. user {first['user_id']!r} item {first['item_id']!r} at "
                        f"{pd.Timestamp(first['timestamp']).isoformat()} (field `timestamp`); drop or re-date them")


def read_new_items(items: str | Path) -> pd.DataFrame:
    from chatrec.data.readers import read_table
    from chatrec.data.validate import validate_catalog

    result = validate_catalog(read_table(items, "catalog"))
    if result.rejected:
        first = result.rejected[0]
        raise DataError(f"{items}: {len(result.rejected)} invalid item rows, e.g. {first}")
    return result.frame


INCOMPLETE = ".continual-incomplete"  # in --out while a run writes it; a rerun may replace such a folder


def copy_parent(parent: Bundle, out: Bundle) -> None:
    """Copy the parent's files into `out`, which must be new, empty, or left by a failed run (which
    wrote only `quarantine/`, or still holds the `INCOMPLETE` marker): those are replaced."""
    if out.root.exists():
        entries = {p.name for p in out.root.iterdir()}
        if INCOMPLETE in entries or entries <= {"quarantine"}:
            for name in entries - {"quarantine"}:
                target = out.root / name
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        else:
            raise DataError(f"{out.root} is not empty; choose a new --out folder for the continual bundle")
    out.ensure()
    (out.root / INCOMPLETE).write_text("a continual run is writing this bundle; it is not usable yet\n")
    for name in COPIED:
        src = parent.path(name)
        if src.is_dir():
            shutil.copytree(src, out.path(name))
        elif src.exists():
            shutil.copy2(src, out.path(name))


def continual_finetune(
    parent: Bundle | str | Path,
    logs: str | Path | Sequence[str | Path],
    out: Bundle | str | Path,
    *,
    items: str | Path | None = None,
    config: ContinualConfig | None = None,
    finetune_overrides: dict[str, Any] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the whole continual update; returns the `continual` record (counts, before/after metrics)."""
    from chatrec.data.store import load_catalog, load_interactions, write_interactions
    from chatrec.sids import assign_bundle
    from tokenizer_ext import extend_bundle

    parent = parent if isinstance(parent, Bundle) else Bundle(parent)
    out = out if isinstance(out, Bundle) else Bundle(out)
    cfg = config or ContinualConfig()
    if ((parent.stage("finetune") or {}).get("counts") or {}).get("recipe") != "sequence":
        raise BundleError(f"{parent.root} was finetuned by the retired conversation-only LoRA recipe; finetune it "
                          f"again with `chatrec finetune --bundle {parent.root} [--lora]` before a continual run")
    parent_trained = parent.require("trained")
    for name in ("catalog.parquet", "interactions.parquet", "sids.parquet", "model"):
        parent.require(name)

    # the new logs are checked before anything but their quarantine is written into --out
    new_logs = read_new_logs(logs, out)
    shown = ", ".join(str(p) for p in log_files(logs))
    check_after_cut(new_logs, load_interactions(parent), shown)
    copy_parent(parent, out)
    shutil.rmtree(out.model_dir)  # the trained (shallow) model is where training continues
    shutil.copytree(parent_trained, out.model_dir)
    new_logs = read_new_logs(logs, out)
    shown = ", ".join(str(p) for p in log_files(logs))
    check_after_cut(new_logs, load_interactions(parent), shown)
    known = set(load_catalog(out)["item_id"].astype(str))
    missing = sorted(set(new_logs["item_id"].astype(str)) - known)
    new_items = pd.DataFrame()
    if missing:
        if items is None:
            raise DataError(f"{len(missing)} items in {shown} are not in the catalog (e.g. {missing[0]}); "
                            "pass their catalog rows with --items FILE")
        new_items = read_new_items(items)
        absent = sorted(set(missing) - set(new_items["item_id"].astype(str)))
        if absent:
            raise DataError(f"--items {items} lacks {len(absent)} items the logs name, e.g. {absent[0]}")
        new_items = new_items[new_items["item_id"].astype(str).isin(missing)]
        assign_bundle(out, new_items, update_catalog=True)
    old = load_interactions(out)
    merged = pd.concat([old, new_logs], ignore_index=True)
    merged = merged.drop_duplicates(subset=["user_id", "item_id", "action", "timestamp"])
    write_interactions(merged, out)
    token_map = extend_bundle(out, quiet=True)

    since = pd.Timestamp(new_logs["timestamp"].min())
    build_cfg = _config_from(parent.stage("build"), BuildConfig, since=since.isoformat(),
                             replay_fraction=cfg.replay_fraction)
    counts = build_bundle(out, build_cfg)
    record: dict[str, Any] = {
        "parent": str(parent.root), "logs": [str(p) for p in log_files(logs)], "since": since.isoformat(),
        "new_interactions": len(new_logs), "new_items": len(new_items),
        "vocab_size": token_map.vocab_size, "train_rows": counts["train"],
    }
    out.record_stage("continual", config=cfg, inputs={f"logs{i}": p for i, p in enumerate(log_files(logs))},
                     extra=record)

    from finetune.sequence import SequenceConfig, train_sequences

    before = _score_sequence(out, out.model_dir, cfg) if cfg.eval_users else {}
    seq_cfg = _config_from(parent.stage("finetune"), SequenceConfig, **(finetune_overrides or {}))
    seq_cfg.keep_layers, seq_cfg.rows_steps = None, 0  # already shallow; the rows are trained
    ft_counts = train_sequences(out, seq_cfg, quiet=quiet)
    after = _score_sequence(out, out.path("trained"), cfg) if cfg.eval_users else {}
    record.update({"before": before, "after": after, "finetune": ft_counts})
    out.record_stage("continual", config=cfg, inputs={f"logs{i}": p for i, p in enumerate(log_files(logs))},
                     extra=record)
    (out.root / INCOMPLETE).unlink()
    return record


def _score_sequence(bundle: Bundle, model_dir: Path, cfg: ContinualConfig) -> dict[str, float]:
    """HR@K / NDCG@K of the sequence model in `model_dir` on the new period's test users."""
    from finetune.sequence import evaluate_sequences
    from tokenizer_ext import load_extended

    model, tokenizer, _ = load_extended(model_dir)
    model.eval()
    return evaluate_sequences(model, tokenizer, bundle, model_dir, cfg.eval_users, cfg.eval_k, split="test")

