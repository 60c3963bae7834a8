"""CLI commands: `chatrec data build`, `chatrec finetune`, `chatrec export` (thin layers over `finetune/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from chatrec.cli.app import app, data_app
from chatrec.errors import ConfigError
from finetune.continual import ContinualConfig
from finetune.data import BuildConfig
from finetune.export import ExportConfig
from finetune.sequence import SequenceConfig
from finetune.teacher import TeacherConfig


def _help(cls: type, name: str) -> str:
    return str(cls.__dataclass_fields__[name].metadata["help"])  # type: ignore[attr-defined]


_BUNDLE = "Bundle directory (default: CHATREC_HOME/bundles/default)."


def _bundle(path: Path | None) -> Any:
    from chatrec.bundle import Bundle
    from chatrec.paths import default_bundle

    return Bundle(path or default_bundle())


def parse_weights(text: str | None) -> dict[str, float] | None:
    """`next_item=1,action=0.5` -> {"next_item": 1.0, "action": 0.5}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"`--weights` takes TASK=WEIGHT pairs separated by commas, got {part!r}")
    return out


@data_app.command("build")
def build_cmd(
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE),
    history_len: int = typer.Option(20, "--history-len", help=_help(BuildConfig, "history_len")),
    weights: str = typer.Option(None, "--weights", help=_help(BuildConfig, "task_weights")
                                + " Format: next_item=1,action=0.5,alignment=0.2,text_request=0.2,conversation=0.2"),
    with_titles: bool = typer.Option(False, "--with-titles", help=_help(BuildConfig, "with_titles")),
    max_users: int = typer.Option(None, "--max-users", help=_help(BuildConfig, "max_users")),
    max_targets_per_user: int = typer.Option(None, "--max-targets-per-user",
                                             help=_help(BuildConfig, "max_targets_per_user")),
    since: str = typer.Option(None, "--since", help=_help(BuildConfig, "since")),
    replay_fraction: float = typer.Option(0.0, "--replay-fraction", help=_help(BuildConfig, "replay_fraction")),
    window_tokens: int = typer.Option(256, "--window-tokens", help=_help(BuildConfig, "window_tokens")),
    window_stride: float = typer.Option(0.5, "--window-stride", help=_help(BuildConfig, "window_stride")),
    seed: int = typer.Option(0, "--seed", help=_help(BuildConfig, "seed")),
    teacher_url: str = typer.Option(None, "--teacher-url", help=_help(TeacherConfig, "url")),
    teacher_model: str = typer.Option("teacher", "--teacher-model", help=_help(TeacherConfig, "model")),
    teacher_api_key: str = typer.Option(None, "--teacher-api-key", envvar="CHATREC_TEACHER_API_KEY",
                                        help=_help(TeacherConfig, "api_key")),
    teacher_rate: float = typer.Option(5.0, "--teacher-rate", help=_help(TeacherConfig, "max_requests_per_s")),
) -> None:
    """Build training conversations: BUNDLE/train/{train,valid,test}.jsonl (point-in-time, leave-last-out)."""
    from finetune.data import build_bundle

    teacher = TeacherConfig(url=teacher_url, model=teacher_model, api_key=teacher_api_key,
                            max_requests_per_s=teacher_rate)
    cfg = BuildConfig(history_len=history_len, with_titles=with_titles, max_users=max_users,
                      max_targets_per_user=max_targets_per_user, since=since, replay_fraction=replay_fraction,
                      window_tokens=window_tokens, window_stride=window_stride, seed=seed, teacher=teacher)
    if weights:
        cfg.task_weights = parse_weights(weights) or cfg.task_weights
        cfg.__post_init__()  # validate the parsed weights
    b = _bundle(bundle)
    counts = build_bundle(b, cfg)
    tasks = ", ".join(f"{k[6:]} {v}" for k, v in counts.items() if k.startswith("train_"))
    typer.echo(f"wrote {b.train_dir}/: train {counts['train']} ({tasks}), valid {counts['valid']}, "
               f"test {counts['test']}; sequences {counts['sequences']} windows of "
               f"{counts['sequence_events']} events ({counts['tokens_per_event']} tokens each); "
               f"next: `chatrec finetune --bundle {b.root}`")


def _seq(name: str) -> str:
    return _help(SequenceConfig, name)


@app.command("finetune")
def finetune_cmd(
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE),
    parent: Path = typer.Option(None, "--from", help="Continual run: the finetuned bundle to start from."),
    logs: list[Path] = typer.Option(None, "--logs", help="Continual run: new interactions (Parquet, JSONL or CSV); "
                                                         "repeat it for several files (one per gateway replica)."),
    out: Path = typer.Option(None, "--out", help="Continual run: the new bundle to write."),
    items: Path = typer.Option(None, "--items", help="Continual run: catalog rows of items new in the logs."),
    replay_fraction: float = typer.Option(0.5, "--replay-fraction", help=_help(ContinualConfig, "replay_fraction")),
    reading: str = typer.Option(None, "--reading", help=_seq("reading")),
    events_max_len: int = typer.Option(None, "--events-max-len", help=_seq("events_max_len")),
    events_item_input: bool = typer.Option(None, "--events-item-input/--no-events-item-input",
                                           help=_seq("events_item_input")),
    events_item_bias: bool = typer.Option(None, "--events-item-bias/--no-events-item-bias",
                                          help=_seq("events_item_bias")),
    events_popularity: float = typer.Option(None, "--events-popularity", help=_seq("events_popularity")),
    keep_layers: int = typer.Option(None, "--keep-layers", help=_seq("keep_layers")),
    full_depth: bool = typer.Option(False, "--full-depth", help="Keep every decoder layer (--keep-layers all)."),
    lora: bool = typer.Option(False, "--lora", help=_seq("lora")),
    lora_r: int = typer.Option(None, "--lora-r", help=_seq("lora_r")),
    lora_alpha: int = typer.Option(None, "--lora-alpha", help=_seq("lora_alpha")),
    lora_dropout: float = typer.Option(None, "--lora-dropout", help=_seq("lora_dropout")),
    max_minutes: float = typer.Option(None, "--max-minutes", help=_seq("max_minutes")),
    max_steps: int = typer.Option(None, "--max-steps", help=_seq("max_steps")),
    epochs: float = typer.Option(None, "--epochs", help=_seq("epochs")),
    save_minutes: str = typer.Option(None, "--save-minutes", help=_seq("save_minutes") + " Comma-separated, e.g. 15,30,60."),
    batch_size: int = typer.Option(None, "--batch-size", help=_seq("batch_size")),
    micro_batch_size: int = typer.Option(None, "--micro-batch-size", help=_seq("micro_batch_size")),
    group_by_length: bool = typer.Option(None, "--group-by-length/--no-group-by-length", help=_seq("group_by_length")),
    lr: float = typer.Option(None, "--lr", help=_seq("learning_rate")),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help=_seq("warmup_steps")),
    chat_share: float = typer.Option(None, "--chat-share", help=_seq("chat_share")),
    chat_batch_size: int = typer.Option(None, "--chat-batch-size", help=_seq("chat_batch_size")),
    rows_lr: float = typer.Option(None, "--rows-lr", help=_seq("rows_learning_rate")),
    rows_steps: int = typer.Option(None, "--rows-steps", help=_seq("rows_steps")),
    dropout: float = typer.Option(None, "--dropout", help=_seq("dropout")),
    attention_dropout: float = typer.Option(None, "--attention-dropout", help=_seq("attention_dropout")),
    weight_decay: float = typer.Option(None, "--weight-decay", help=_seq("weight_decay")),
    rows_weight_decay: float = typer.Option(None, "--rows-weight-decay", help=_seq("rows_weight_decay")),
    average_from: float = typer.Option(None, "--average-from", help=_seq("average_from")),
    trim_above_mb: float = typer.Option(None, "--trim-above-mb", help=_seq("trim_above_mb")),
    head_rows_multiple: int = typer.Option(None, "--head-rows-multiple", help=_seq("head_rows_multiple")),
    bf16: str = typer.Option(None, "--bf16", help=_seq("bf16")),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help=_seq("checkpoint_every")),
    resume: bool = typer.Option(False, "--resume", help="Continue from BUNDLE/checkpoints/state/ (same settings)."),
    eval_users: int = typer.Option(None, "--eval-users", help=_seq("eval_users")),
    seed: int = typer.Option(None, "--seed", help=_seq("seed")),
    threads: int = typer.Option(None, "--threads", help=_seq("num_threads")),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Finetune a bundle with the sequence recipe (--bundle B; --lora for LoRA adapters; several processes
    under `accelerate launch -m chatrec finetune`), or continue one on new logs (--from B --logs L --out N)."""
    if full_depth and keep_layers is not None:
        raise ConfigError("use either --keep-layers N or --full-depth")
    overrides = {
        "reading": reading, "events_max_len": events_max_len, "events_item_input": events_item_input,
        "events_popularity": events_popularity, "events_item_bias": events_item_bias,
        "keep_layers": keep_layers, "max_minutes": max_minutes, "max_steps": max_steps, "epochs": epochs,
        "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
        "batch_size": batch_size, "micro_batch_size": micro_batch_size, "group_by_length": group_by_length,
        "learning_rate": lr,
        "warmup_steps": warmup_steps, "chat_share": chat_share, "chat_batch_size": chat_batch_size,
        "rows_learning_rate": rows_lr, "rows_steps": rows_steps, "dropout": dropout,
        "attention_dropout": attention_dropout, "weight_decay": weight_decay,
        "rows_weight_decay": rows_weight_decay, "average_from": average_from,
        "trim_above_mb": trim_above_mb, "head_rows_multiple": head_rows_multiple, "bf16": bf16,
        "checkpoint_every": checkpoint_every, "eval_users": eval_users, "seed": seed, "num_threads": threads,
        "save_minutes": tuple(float(m) for m in save_minutes.split(",")) if save_minutes else None,
        "lora": True if lora else None,
    }
    seq = {k: v for k, v in overrides.items() if v is not None}
    if full_depth:
        seq["keep_layers"] = None
    if parent is not None or logs or out is not None:
        if parent is None or not logs or out is None:
            raise ConfigError("a continual run needs all of --from BUNDLE, --logs NEW_LOGS and --out NEW_BUNDLE")
        if bundle is not None:
            raise ConfigError("use either --bundle (a first finetune) or --from/--logs/--out (a continual run)")
        from finetune.continual import continual_finetune

        rec = continual_finetune(parent, logs, out, items=items, config=ContinualConfig(replay_fraction=replay_fraction),
                                 finetune_overrides=seq, quiet=quiet)
        typer.echo(f"continual: {rec['new_interactions']} new interactions, {rec['new_items']} new items; "
                   f"new period before {json.dumps(rec['before'])} after {json.dumps(rec['after'])}")
        typer.echo(f"wrote {out}; next: `chatrec export --bundle {out}`")
        return
    from finetune.sequence import train_sequences

    b = _bundle(bundle)
    counts = train_sequences(b, SequenceConfig(**seq), quiet=quiet, resume=resume)
    if "peak_rss_mb" not in counts:  # another than the main process of a multi-process run: it saved nothing
        return
    metrics = {k: round(v, 4) for k, v in counts.items() if k.startswith("valid_") and isinstance(v, float)}
    kind = f"LoRA on {counts['layers']} layers" if counts["lora"] else f"{counts['layers']} layers"
    kind += ", one position per event" if counts.get("reading") == "events" else ""
    typer.echo(f"trained {counts['steps']} steps in {counts['train_minutes']:.1f} min ({kind}, "
               f"{counts['processes']} process(es), bf16 {counts['bf16']}): loss {counts['first_loss']:.3f} -> "
               f"{counts['final_loss']:.3f}, {counts['targets_per_s']:.0f} targets/s, "
               f"peak {counts['peak_rss_mb']:.0f} MiB {metrics or ''}")
    typer.echo(f"wrote {b.path('trained')}; next: `chatrec export --bundle {b.root}`")


@app.command("export")
def export_cmd(
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE),
    no_merged: bool = typer.Option(False, "--no-merged", help="Skip the merged folder BUNDLE/export/."),
    no_multi: bool = typer.Option(False, "--no-multi", help="Skip export/multi/ (a --lora run's base + LoRA-only adapter for vLLM --enable-lora)."),
    adapter_name: str = typer.Option("chatrec", "--adapter-name", help=_help(ExportConfig, "adapter_name")),
    dtype: str = typer.Option("float32", "--dtype", help=_help(ExportConfig, "dtype")),
) -> None:
    """The trained model (LoRA merged) as BUNDLE/export/ (vLLM-loadable); for a --lora run also the multi-adapter layout."""
    from finetune.export import export_bundle

    b = _bundle(bundle)
    outputs = export_bundle(b, ExportConfig(merged=not no_merged, multi_adapter=not no_multi,
                                            adapter_name=adapter_name, dtype=dtype))
    for name, path in outputs.items():
        typer.echo(f"{name}: {path}")
