"""CLI commands: eval (registered on chatrec.cli.app groups)."""

from __future__ import annotations

from pathlib import Path

import typer

from chatrec.cli.app import app


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command("eval")
def eval_command(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle with catalog.parquet and interactions.parquet."),
    systems: str = typer.Option("random,popularity,itemknn,sasrec", "--systems",
                                help="Comma-separated systems: random, popularity, itemknn, sasrec, llm (or llm-NAME)."),
    k: str = typer.Option("1,5,10,20", "--k", help="Comma-separated cut-offs for HR@K and NDCG@K."),
    max_users: int | None = typer.Option(None, "--max-users", help="Evaluate a seeded sample of this many test users."),
    seed: int = typer.Option(0, "--seed", help="Seed for user sampling, requests and baseline training."),
    target_actions: str = typer.Option("like", "--target-actions", help="Comma-separated actions that count as targets."),
    protocol: str = typer.Option("liked", "--protocol", help="Split: liked (each user's last liked event is the "
                                 "target) or last-item (the last event whatever its rating, as in the SASRec/"
                                 "BERT4Rec/HSTU papers; with an LLM, which trains on the liked split, cases "
                                 "whose target it trained on are left out for every system)."),
    conversational: bool = typer.Option(True, "--conversational/--no-conversational",
                                        help="Also score text requests with a checkable constraint."),
    stated_titles: str = typer.Option("1,3", "--stated-titles", help="Also score each system from only the N most "
                                      "recent liked input items, for each comma-separated N (a person naming a few "
                                      "favourites; the chat system is told them in words); '' = skip."),
    engine: str = typer.Option("auto", "--engine", help="Engine for llm systems: auto (vllm when installed: what "
                               "`chatrec serve` serves), vllm or transformers."),
    last_level: str = typer.Option(None, "--last-level", help="LLM retrieval on the SID's last (disambiguation) "
                                   "level: prior (no model call, as served; the default) or model."),
    trim_history: bool = typer.Option(True, "--trim-history/--no-trim-history", help="LLM plain recommendations: "
                                      "drop up to an eighth of the oldest history events so the prompt ends one "
                                      "token past a whole KV block (as `chatrec serve` does by default)."),
    cases: str = typer.Option("test", "--cases", help="Which held-out cases to score: test, or valid (each "
                              "user's target before the test one; choose settings here, then report test once). "
                              "valid writes BUNDLE/eval_valid.json."),
    out: Path = typer.Option(None, "--out", help="Write the results to this JSON file only, leaving the bundle's "
                             "eval.json, table, plot and manifest as they are."),
    sasrec_epochs: int = typer.Option(50, "--sasrec-epochs", help="Maximum SASRec epochs (early-stopped on validation)."),
    sasrec_negatives: int | None = typer.Option(None, "--sasrec-negatives", help="SASRec sampled-softmax negatives "
                                                "per batch (default: full softmax over the catalog; 128 is the "
                                                "published ML-1M setting and far cheaper on a large catalog)."),
    sasrec_max_len: int = typer.Option(50, "--sasrec-max-len", help="Most recent items SASRec reads (the published "
                                       "ML-1M setting is 200)."),
    sasrec_max_minutes: float = typer.Option(None, "--sasrec-max-minutes", help="Stop SASRec's training after the "
                                             "epoch that ends past this many minutes (best validated weights kept)."),
    sasrec_threads: int = typer.Option(1, "--sasrec-threads", help="torch CPU threads for SASRec (one is far faster "
                                       "than two on a busy shared CPU; use the machine's cores when it is idle)."),
    llm_model_dir: Path = typer.Option(None, "--llm-model-dir", help="Model folder for llm systems (default: "
                                       "BUNDLE/export), e.g. a training snapshot BUNDLE/checkpoints/seq-015.0min."),
) -> None:
    """Compare systems on a leave-last-out split with full-catalog ranking; writes BUNDLE/eval.json."""
    from chatrec.baselines import SASRecConfig
    from chatrec.errors import ConfigError
    from chatrec.evaluation import EvalConfig, eval_file, evaluate_bundle, markdown_table
    from chatrec.retrieval import SERVED_LAST_LEVEL

    try:
        ks = tuple(int(x) for x in _csv(k))
        stated = tuple(int(x) for x in _csv(stated_titles))
    except ValueError:
        raise ConfigError(f"`--k` and `--stated-titles` must be comma-separated integers, got {k!r}, "
                          f"{stated_titles!r}") from None
    config = EvalConfig(systems=tuple(_csv(systems)), ks=ks, max_users=max_users, seed=seed,
                        target_actions=tuple(_csv(target_actions)), protocol=protocol, conversational=conversational,
                        stated_titles=stated,
                        engine=engine, last_level=last_level or SERVED_LAST_LEVEL,
                        trim_history=trim_history, cases=cases,
                        sasrec=SASRecConfig(epochs=sasrec_epochs, negatives=sasrec_negatives, max_len=sasrec_max_len,
                                            threads=sasrec_threads, max_minutes=sasrec_max_minutes),
                        llm_model_dir=str(llm_model_dir) if llm_model_dir else None)
    results = evaluate_bundle(bundle, config, log=lambda msg: typer.echo(msg, err=True), out=out)
    typer.echo(markdown_table(results, config.ks))
    typer.echo(f"wrote {out or Path(bundle) / eval_file(config)}")
