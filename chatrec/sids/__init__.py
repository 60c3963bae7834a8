"""Semantic IDs: item embeddings -> residual codes (RQ-KMeans or RQ-VAE) + a disambiguation level.

    from chatrec.sids import SidConfig, fit_bundle, assign_bundle, load_sids
    result = fit_bundle("bundle/", SidConfig(method="rqkmeans", levels=3, codebook_size=256))
    new_rows = assign_bundle("bundle/", new_items_df)   # cold start with the frozen codebooks

Heavy libraries (faiss, torch, sentence-transformers) are imported inside the functions that use them.
"""

from chatrec.sids.config import METHODS, SidConfig
from chatrec.sids.disambiguation import disambiguate, disambiguate_new
from chatrec.sids.pipeline import (
    SidResult,
    assign_bundle,
    codes_matrix,
    fit_bundle,
    fit_sids,
    level_sizes,
    load_sid_model,
    load_sids,
    sids_frame,
    write_sids,
)
from chatrec.sids.report import summary

__all__ = [
    "METHODS", "SidConfig", "SidResult", "assign_bundle", "codes_matrix", "disambiguate",
    "disambiguate_new", "fit_bundle", "fit_sids", "level_sizes", "load_sid_model", "load_sids",
    "sids_frame", "summary", "write_sids",
]
