"""Data contracts, validated readers, importers and the bundle's two tables.

Public API (other stages call these):
`load_catalog(bundle)`, `load_interactions(bundle)`, `write_catalog(df, bundle)`,
`write_interactions(df, bundle)`, `import_movielens(out_dir)`, `import_files(catalog, log, out_dir)`,
`validate_files(paths)`.

Names are imported lazily (pandas and pyarrow load on first use), so `chatrec --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chatrec.data.config import ImportFilesConfig, MovieLensConfig

if TYPE_CHECKING:
    from chatrec.data.importer import ImportResult, ValidationFailed, import_files
    from chatrec.data.movielens import import_movielens
    from chatrec.data.readers import RawTable, read_table
    from chatrec.data.schema import CATALOG_COLUMNS, INTERACTION_COLUMNS, ColumnSpec
    from chatrec.data.store import load_catalog, load_interactions, write_catalog, write_interactions
    from chatrec.data.validate import (
        Problem,
        TableResult,
        ValidationReport,
        validate_catalog,
        validate_files,
        validate_interactions,
        write_quarantine,
    )

_WHERE = {
    "ImportResult": "importer", "ValidationFailed": "importer", "import_files": "importer",
    "import_movielens": "movielens",
    "RawTable": "readers", "read_table": "readers",
    "CATALOG_COLUMNS": "schema", "INTERACTION_COLUMNS": "schema", "ColumnSpec": "schema",
    "load_catalog": "store", "load_interactions": "store", "write_catalog": "store",
    "write_interactions": "store",
    "Problem": "validate", "TableResult": "validate", "ValidationReport": "validate",
    "validate_catalog": "validate", "validate_files": "validate", "validate_interactions": "validate",
    "write_quarantine": "validate",
}

__all__ = [
    "CATALOG_COLUMNS",
    "INTERACTION_COLUMNS",
    "ColumnSpec",
    "ImportFilesConfig",
    "ImportResult",
    "MovieLensConfig",
    "Problem",
    "RawTable",
    "TableResult",
    "ValidationFailed",
    "ValidationReport",
    "import_files",
    "import_movielens",
    "load_catalog",
    "load_interactions",
    "read_table",
    "validate_catalog",
    "validate_files",
    "validate_interactions",
    "write_catalog",
    "write_interactions",
    "write_quarantine",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'chatrec.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"chatrec.data.{module}"), name)
    globals()[name] = value
    return value
