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
from finetune.recipe import FinetuneConfig
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


@app.command("finetune")
def finetune_cmd(
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE),
    parent: Path = typer.Option(None, "--from", help="Continual run: the finetuned bundle to start from."),
    logs: list[Path] = typer.Option(None, "--logs", help="Continual run: new interactions (Parquet, JSONL or CSV); "
                                                         "repeat it for several files (one per gateway replica)."),
    out: Path = typer.Option(None, "--out", help="Continual run: the new bundle to write."),
    items: Path = typer.Option(None, "--items", help="Continual run: catalog rows of items new in the logs."),
    replay_fraction: float = typer.Option(0.5, "--replay-fraction", help=_help(ContinualConfig, "replay_fraction")),
    recipe: str = typer.Option("sequence", "--recipe", help="sequence: full finetuning of a shallow model on whole "
                               "user sequences + a chat share (fast on CPU, the default); lora: LoRA on the chat "
                               "conversations of train.jsonl (the whole model, resumable)."),
    keep_layers: int = typer.Option(None, "--keep-layers", help="sequence: " + _help(SequenceConfig, "keep_layers")),
    max_minutes: float = typer.Option(None, "--max-minutes", help="sequence: " + _help(SequenceConfig, "max_minutes")),
    save_minutes: str = typer.Option(None, "--save-minutes", help="sequence: " + _help(SequenceConfig, "save_minutes")
                                     + " Comma-separated, e.g. 15,30,60."),
    chat_share: float = typer.Option(None, "--chat-share", help="sequence: " + _help(SequenceConfig, "chat_share")),
    rows_lr: float = typer.Option(None, "--rows-lr", help="sequence: " + _help(SequenceConfig, "rows_learning_rate")),
    rows_steps: int = typer.Option(None, "--rows-steps", help="sequence: " + _help(SequenceConfig, "rows_steps")),
    micro_batch_size: int = typer.Option(None, "--micro-batch-size",
                                         help="sequence: " + _help(SequenceConfig, "micro_batch_size")),
    dropout: float = typer.Option(None, "--dropout", help="sequence: " + _help(SequenceConfig, "dropout")),
    attention_dropout: float = typer.Option(None, "--attention-dropout",
                                            help="sequence: " + _help(SequenceConfig, "attention_dropout")),
    weight_decay: float = typer.Option(None, "--weight-decay", help="sequence: " + _help(SequenceConfig, "weight_decay")),
    average_from: float = typer.Option(None, "--average-from", help="sequence: " + _help(SequenceConfig, "average_from")),
    trim_above_mb: float = typer.Option(None, "--trim-above-mb", help="sequence: " + _help(SequenceConfig, "trim_above_mb")),
    head_rows_multiple: int = typer.Option(None, "--head-rows-multiple",
                                           help="sequence: " + _help(SequenceConfig, "head_rows_multiple")),
    resume: bool = typer.Option(False, "--resume", help="lora: continue from the latest checkpoint in BUNDLE/checkpoints."),
    max_steps: int = typer.Option(None, "--max-steps", help=_help(FinetuneConfig, "max_steps")),
    epochs: float = typer.Option(None, "--epochs", help=_help(FinetuneConfig, "epochs")),
    batch_size: int = typer.Option(None, "--batch-size", help=_help(FinetuneConfig, "batch_size")),
    grad_accum: int = typer.Option(None, "--grad-accum", help=_help(FinetuneConfig, "grad_accum")),
    lr: float = typer.Option(None, "--lr", help=_help(FinetuneConfig, "learning_rate")),
    lora_r: int = typer.Option(None, "--lora-r", help=_help(FinetuneConfig, "lora_r")),
    lora_alpha: int = typer.Option(None, "--lora-alpha", help=_help(FinetuneConfig, "lora_alpha")),
    lora_dropout: float = typer.Option(None, "--lora-dropout", help=_help(FinetuneConfig, "lora_dropout")),
    max_tokens: int = typer.Option(None, "--max-tokens", help=_help(FinetuneConfig, "max_tokens")),
    tasks: str = typer.Option(None, "--tasks", help=_help(FinetuneConfig, "tasks") + " Comma-separated."),
    max_train_samples: int = typer.Option(None, "--max-train-samples", help=_help(FinetuneConfig, "max_train_samples")),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help=_help(FinetuneConfig, "warmup_steps")),
    eval_every: int = typer.Option(None, "--eval-every", help=_help(FinetuneConfig, "eval_every")),
    eval_users: int = typer.Option(None, "--eval-users", help=_help(FinetuneConfig, "eval_users")),
    save_every: int = typer.Option(None, "--save-every", help=_help(FinetuneConfig, "save_every")),
    seed: int = typer.Option(None, "--seed", help=_help(FinetuneConfig, "seed")),
    threads: int = typer.Option(None, "--threads", help=_help(FinetuneConfig, "num_threads")),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Finetune a bundle (--bundle B; the sequence recipe, or --recipe lora), or continue one on new logs (--from B --logs L --out N)."""
    overrides = {
        "max_steps": max_steps, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
        "learning_rate": lr, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
        "max_tokens": max_tokens, "tasks": tuple(t.strip() for t in tasks.split(",")) if tasks else None,
        "max_train_samples": max_train_samples, "warmup_steps": warmup_steps, "eval_every": eval_every,
        "eval_users": eval_users, "save_every": save_every, "seed": seed, "num_threads": threads,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if parent is not None or logs or out is not None:
        if parent is None or not logs or out is None:
            raise ConfigError("a continual run needs all of --from BUNDLE, --logs NEW_LOGS and --out NEW_BUNDLE")
        if bundle is not None:
            raise ConfigError("use either --bundle (a first finetune) or --from/--logs/--out (a continual run)")
        from finetune.continual import continual_finetune

        rec = continual_finetune(parent, logs, out, items=items, config=ContinualConfig(replay_fraction=replay_fraction),
                                 finetune_overrides=overrides, quiet=quiet)
        typer.echo(f"continual: {rec['new_interactions']} new interactions, {rec['new_items']} new items; "
                   f"new period before {json.dumps(rec['before'])} after {json.dumps(rec['after'])}")
        typer.echo(f"wrote {out}; next: `chatrec export --bundle {out}`")
        return
    b = _bundle(bundle)
    if recipe == "sequence":
        from finetune.sequence import train_sequences

        seq = {"keep_layers": keep_layers, "max_minutes": max_minutes, "chat_share": chat_share,
               "rows_learning_rate": rows_lr, "rows_steps": rows_steps, "max_steps": max_steps, "epochs": epochs,
               "dropout": dropout, "attention_dropout": attention_dropout, "weight_decay": weight_decay,
               "average_from": average_from, "trim_above_mb": trim_above_mb, "micro_batch_size": micro_batch_size,
               "head_rows_multiple": head_rows_multiple,
               "batch_size": batch_size, "learning_rate": lr, "warmup_steps": warmup_steps,
               "eval_users": eval_users, "seed": seed, "num_threads": threads,
               "save_minutes": tuple(float(m) for m in save_minutes.split(",")) if save_minutes else None}
        lora_only = sorted(k for k in overrides if k not in seq)
        if lora_only or resume:
            raise ConfigError(f"--recipe sequence does not take {', '.join(lora_only) or 'resume'}; "
                              "use --recipe lora for those")
        counts = train_sequences(b, SequenceConfig(**{k: v for k, v in seq.items() if v is not None}), quiet=quiet)
        metrics = {k: round(v, 4) for k, v in counts.items() if k.startswith("valid_") and isinstance(v, float)}
        typer.echo(f"trained {counts['steps']} steps in {counts['train_minutes']:.1f} min ({counts['layers']} layers, "
                   f"bf16 {counts['bf16']}): loss {counts['first_loss']:.3f} -> {counts['final_loss']:.3f}, "
                   f"{counts['targets_per_s']:.0f} targets/s, peak {counts['peak_rss_mb']:.0f} MiB {metrics or ''}")
        typer.echo(f"wrote {b.path('trained')}; next: `chatrec export --bundle {b.root}`")
        return
    if recipe != "lora":
        raise ConfigError(f"`--recipe` must be sequence or lora, got {recipe!r}")
    from finetune.recipe import finetune

    counts = finetune(b, FinetuneConfig(**overrides), resume=resume, quiet=quiet)
    metrics = {k: round(v, 4) for k, v in counts.items() if k.startswith("valid_") and isinstance(v, float)}
    typer.echo(f"trained {counts['steps']} steps: loss {counts['first_loss']:.3f} -> {counts['final_loss']:.3f}, "
               f"{counts['tokens_per_s']:.0f} tokens/s, peak {counts['peak_rss_mb']:.0f} MiB {metrics or ''}")
    typer.echo(f"wrote {b.adapter_dir}; next: `chatrec export --bundle {b.root}`")


@app.command("export")
def export_cmd(
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE),
    no_merged: bool = typer.Option(False, "--no-merged", help="Skip the merged folder BUNDLE/export/."),
    no_multi: bool = typer.Option(False, "--no-multi", help="Skip export/multi/ (base + LoRA-only adapter for vLLM --enable-lora)."),
    adapter_name: str = typer.Option("chatrec", "--adapter-name", help=_help(ExportConfig, "adapter_name")),
    dtype: str = typer.Option("float32", "--dtype", help=_help(ExportConfig, "dtype")),
) -> None:
    """Merge LoRA + trained token rows into BUNDLE/export/ (vLLM-loadable), and write the multi-adapter layout."""
    from finetune.export import export_bundle

    b = _bundle(bundle)
    outputs = export_bundle(b, ExportConfig(merged=not no_merged, multi_adapter=not no_multi,
                                            adapter_name=adapter_name, dtype=dtype))
    for name, path in outputs.items():
        typer.echo(f"{name}: {path}")
