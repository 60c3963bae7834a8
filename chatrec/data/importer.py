"""Import a catalog and a log into a bundle: validate, write the two tables, quarantine, manifest.

`import_files` is a user's own data (Parquet, JSONL or CSV, see `chatrec.data.schema`). Valid rows
are written, bad rows go to `BUNDLE/quarantine/<input-file-name>.jsonl`, and the manifest's `data`
stage records rows in / kept / quarantined per file (rows in = kept + quarantined, always).
With `strict=True` any bad row fails the import and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatrec.bundle import Bundle, atomic_path
from chatrec.data.config import ImportFilesConfig
from chatrec.data.readers import read_table
from chatrec.data.store import write_catalog_frame, write_interactions_frame
from chatrec.data.validate import (
    Problem,
    TableResult,
    ValidationReport,
    validate_catalog,
    validate_interactions,
    write_quarantine,
)
from chatrec.errors import DataError


class ValidationFailed(DataError):
    """Rows failed validation where that is not allowed (`--strict`); `report` holds every problem."""

    def __init__(self, message: str, report: ValidationReport):
        super().__init__(message)
        self.report = report


@dataclass
class ImportResult:
    """What an import wrote, with counts and the rows it quarantined."""

    bundle: Bundle
    catalog: TableResult
    interactions: TableResult
    quarantine: dict[str, Path]
    counts: dict[str, int]
    actions: dict[str, int]

    @property
    def problems(self) -> list[Problem]:
        return self.catalog.problems + self.interactions.problems

    @property
    def rows_quarantined(self) -> int:
        return self.catalog.rows_quarantined + self.interactions.rows_quarantined

    def summary(self) -> str:
        """One line: users, items, interactions and the action distribution."""
        c = self.counts
        total = max(c["interactions"], 1)
        acts = ", ".join(f"{a} {n:,} ({100 * n / total:.0f}%)" for a, n in self.actions.items())
        return (f"{c['users']:,} users, {c['items']:,} items, {c['interactions']:,} interactions "
                f"(actions: {acts}) -> {self.bundle.root}")


def import_files(
    catalog_path: str | os.PathLike[str],
    interactions_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    strict: bool = False,
    columns: dict[str, str] | None = None,
    domain: str = "item",
    positive_actions: Sequence[str] = (),
    negative_actions: Sequence[str] = (),
) -> ImportResult:
    """Validate a user's catalog and log and write them into bundle `out_dir` (see module docstring).

    `columns` maps our field names to yours, e.g. `{"item_id": "movieId", "timestamp": "ts"}`.
    """
    config = ImportFilesConfig(str(catalog_path), str(interactions_path), str(out_dir), strict, dict(columns or {}),
                               domain, tuple(positive_actions), tuple(negative_actions))
    cat_raw = read_table(config.catalog, "catalog", config.columns)
    log_raw = read_table(config.interactions, "interactions", config.columns)
    catalog = validate_catalog(cat_raw)
    log = validate_interactions(log_raw, known_items=set(catalog.frame["item_id"]))
    if config.strict and (catalog.rejected or log.rejected):
        report = ValidationReport([catalog, log])
        raise ValidationFailed(f"--strict: {report.summary()}; nothing written", report)
    roles = _action_roles(config, sorted(set(log.frame["action"].astype(str))))
    return write_import(
        Bundle(config.out), catalog, log, stage_config=config,
        inputs={"catalog": config.catalog, "interactions": config.interactions},
        extra={"source": "files", **roles},
    )


def _action_roles(config: ImportFilesConfig, actions: list[str]) -> dict[str, Any]:
    """Positive and negative actions: declared (each must occur in the log) or read from the names, with a warning."""
    import sys

    from chatrec.prompts import action_roles

    missing = sorted((set(config.positive_actions) | set(config.negative_actions)) - set(actions))
    if missing:
        raise DataError(f"{config.interactions}: declared actions {missing} never occur in the log "
                        f"(field `action`; the log has {actions})")
    pos, neg, inferred = action_roles(actions, config.positive_actions, config.negative_actions)
    if inferred and not set(actions) <= {"like", "dislike", "watch"}:
        print(f"warning: positive actions {list(pos)}, negative {list(neg)} were read from the action names "
              f"{actions}; set them with --positive A,B --negative C", file=sys.stderr)
    return {"positive_actions": list(pos), "negative_actions": list(neg)}


def write_import(
    bundle: Bundle,
    catalog: TableResult,
    log: TableResult,
    *,
    stage_config: Any,
    inputs: Mapping[str, str | os.PathLike[str]],
    extra: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Write validated tables, the quarantine folder and the `data` stage record into `bundle`."""
    bundle.ensure()
    with atomic_path(bundle.path("quarantine")) as tmp:
        tmp.mkdir()
        written = write_quarantine([catalog, log], tmp)
    quarantine = {name: bundle.path("quarantine", path.name) for name, path in written.items()}
    for table in (catalog, log):
        if table.rows_kept == 0:
            where = f"; see {bundle.path('quarantine')}" if table.rejected else ""
            raise DataError(f"{table.path}: no valid {table.kind} rows ({table.rows_quarantined} quarantined{where})")
    write_catalog_frame(catalog.frame, bundle.catalog_path)
    write_interactions_frame(log.frame, bundle.interactions_path)
    actions = {str(k): int(v) for k, v in log.frame["action"].value_counts().items()}
    counts = {
        "users": int(log.frame["user_id"].nunique()),
        "items": catalog.rows_kept,
        "interactions": log.rows_kept,
        "items_with_interactions": int(log.frame["item_id"].nunique()),
    }
    for table in (catalog, log):
        counts[f"{table.kind}_rows_in"] = table.rows_in
        counts[f"{table.kind}_rows_kept"] = table.rows_kept
        counts[f"{table.kind}_rows_quarantined"] = table.rows_quarantined
    record_extra: dict[str, Any] = {
        "actions": actions,
        "quarantine": {name: str(p.relative_to(bundle.root)) for name, p in quarantine.items()},
        "ignored_columns": {log.path: log.ignored_columns} if log.ignored_columns else {},
    }
    record_extra.update(extra or {})
    bundle.record_stage(
        "data", config=stage_config, inputs=inputs,
        outputs={"catalog": bundle.catalog_path, "interactions": bundle.interactions_path,
                 "quarantine": bundle.path("quarantine")},
        counts=counts, extra=record_extra,
    )
    return ImportResult(bundle, catalog, log, quarantine, counts, actions)
