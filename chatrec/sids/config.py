"""`SidConfig`: one config for both SID methods (residual k-means and RQ-VAE)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from chatrec.embeddings import EmbeddingConfig
from chatrec.errors import ConfigError

METHODS = ("rqkmeans", "rqvae")
DISAMBIGUATION_ORDERS = ("popularity", "catalog")
CODEBOOKS_FROM = ("all", "warm")


@dataclass
class SidConfig:
    """How semantic IDs are learned from item embeddings."""

    method: str = field(default="rqkmeans", metadata={
        "help": "rqkmeans: residual k-means on the embeddings (faiss); rqvae: an MLP autoencoder "
                "with a residual vector quantizer (torch)."})
    levels: int = field(default=2, metadata={
        "help": "Code levels learned from the embeddings; one disambiguation level is added on top, so a history "
                "event costs levels + 2 tokens (its action, the codes, the disambiguation code)."})
    codebook_size: int = field(default=0, metadata={
        "help": "Codes per level; 0 = sized to the catalog: the smallest power of two K >= 8 with "
                "K ** levels >= 2 x items, at most 256 (1,682 items, 2 levels: 64). A code seen rarely is "
                "learned slowly, so fewer, busier codes train faster. Clamped, with a warning, to the item count."})
    collaborative_weight: float = field(default=8.0, metadata={
        "help": "Weight of collaborative signal in the vectors the codes are learned from (LETTER, arXiv "
                "2405.07314): each item's unit text embedding is concatenated with this times its unit vector "
                "from a truncated SVD of the training interactions (users' events before their held-out "
                "targets, so nothing evaluated leaks in), so one code prefix groups items the same users "
                "choose. On ML-100k, all 941 test users after 12 one-thread training minutes, NDCG@10 was "
                "0.063 / 0.071 / 0.082 / 0.089 at weights 1 / 2 / 4 / 8 (8 with --disambiguation popularity; "
                "BENCHMARKS.md). 0 = text only; a bundle without interactions is fitted on text only. Items "
                "nobody has interacted with yet: see --codebooks-from and --impute-cold."})
    codebooks_from: str = field(default="all", metadata={
        "help": "Items the rqkmeans codebooks are learned from: all (every item as it is, cold ones with a zero "
                "collaborative part) or warm (only items with interactions). On ML-100k, two fits trained twice "
                "each scored NDCG@10 0.1066 / 0.1062 (all) against 0.0890 / 0.0983 (warm): every code moves "
                "between the two fits, so this is two k-means outcomes, not a law (BENCHMARKS.md)."})
    impute_cold: bool = field(default=True, metadata={
        "help": "Encode items nobody has interacted with yet (in the catalog or added later by `sids assign`) "
                "with the collaborative part of the level-0 code nearest to their text, not a zero part (which "
                "puts them all in one cell); rqkmeans. Cold items are in no training sequence, so this moves "
                "no trained item's code."})
    collaborative_dim: int = field(default=32, metadata={"help": "SVD components of the collaborative part."})
    disambiguation: str = field(default="popularity", metadata={
        "help": "Order of items that share learned codes on the disambiguation level: popularity (most "
                "training interactions first, so index 0 is the likeliest item of every cell) or catalog "
                "(catalog order). A bundle without interactions uses catalog order."})
    seed: int = field(default=0, metadata={"help": "Random seed: the same seed gives the same SIDs."})
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig, metadata={
        "help": "Text encoder settings (used when texts, not vectors, are given)."})
    kmeans_iters: int = field(default=25, metadata={"help": "k-means iterations per level."})
    rqvae_epochs: int = field(default=100, metadata={"help": "RQ-VAE training epochs."})
    rqvae_batch_size: int = field(default=256, metadata={"help": "RQ-VAE minibatch size."})
    rqvae_lr: float = field(default=1e-3, metadata={"help": "RQ-VAE Adam learning rate."})
    rqvae_hidden: tuple[int, ...] = field(default=(256, 128), metadata={
        "help": "Hidden layer widths of the RQ-VAE encoder (the decoder mirrors them)."})
    rqvae_latent_dim: int = field(default=32, metadata={"help": "RQ-VAE latent (codebook vector) size."})
    rqvae_beta: float = field(default=0.25, metadata={"help": "Commitment loss weight."})
    rqvae_threads: int = field(default=1, metadata={
        "help": "torch CPU threads for RQ-VAE (the model is small: one thread is fastest on a busy "
                "CPU; 0 keeps torch's setting). Ignored on GPU."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if isinstance(self.embedding, dict):
            self.embedding = EmbeddingConfig(**self.embedding)
        self.rqvae_hidden = tuple(int(h) for h in self.rqvae_hidden)
        problems = []
        if self.method not in METHODS:
            problems.append(f"`method` must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.levels < 1:
            problems.append(f"`levels` must be >= 1, got {self.levels}")
        if self.codebook_size < 2 and self.codebook_size != 0:
            problems.append(f"`codebook_size` must be >= 2 (or 0 = sized to the catalog), got {self.codebook_size}")
        if not self.collaborative_weight >= 0:
            problems.append(f"`collaborative_weight` must be >= 0, got {self.collaborative_weight}")
        if self.disambiguation not in DISAMBIGUATION_ORDERS:
            problems.append(f"`disambiguation` must be one of {', '.join(DISAMBIGUATION_ORDERS)}, "
                            f"got {self.disambiguation!r}")
        if self.codebooks_from not in CODEBOOKS_FROM:
            problems.append(f"`codebooks_from` must be one of {', '.join(CODEBOOKS_FROM)}, got {self.codebooks_from!r}")
        if self.collaborative_dim < 1:
            problems.append(f"`collaborative_dim` must be >= 1, got {self.collaborative_dim}")
        if self.kmeans_iters < 1:
            problems.append(f"`kmeans_iters` must be >= 1, got {self.kmeans_iters}")
        if self.rqvae_epochs < 1:
            problems.append(f"`rqvae_epochs` must be >= 1, got {self.rqvae_epochs}")
        if self.rqvae_batch_size < 1:
            problems.append(f"`rqvae_batch_size` must be >= 1, got {self.rqvae_batch_size}")
        if not self.rqvae_lr > 0:
            problems.append(f"`rqvae_lr` must be > 0, got {self.rqvae_lr}")
        if self.rqvae_latent_dim < 1 or any(h < 1 for h in self.rqvae_hidden):
            problems.append(f"`rqvae_latent_dim` and `rqvae_hidden` must be >= 1, got "
                            f"{self.rqvae_latent_dim} and {list(self.rqvae_hidden)}")
        if self.rqvae_threads < 0:
            problems.append(f"`rqvae_threads` must be >= 0, got {self.rqvae_threads}")
        if self.rqvae_beta < 0:
            problems.append(f"`rqvae_beta` must be >= 0, got {self.rqvae_beta}")
        if problems:
            raise ConfigError("; ".join(problems))

    def resolved_codebook_size(self, n_items: int) -> int:
        """`codebook_size`, or when 0 the catalog-sized default (see its help)."""
        if self.codebook_size:
            return self.codebook_size
        return auto_codebook_size(n_items, self.levels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rqvae_hidden"] = list(self.rqvae_hidden)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SidConfig:
        """Build from `to_dict` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def auto_codebook_size(n_items: int, levels: int, *, minimum: int = 8, maximum: int = 256) -> int:
    """The smallest power of two K >= `minimum` with K ** levels >= 2 * n_items, capped at `maximum`."""
    k = minimum
    while k < maximum and k ** levels < 2 * n_items:
        k *= 2
    return k
