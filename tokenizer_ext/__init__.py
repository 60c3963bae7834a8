"""Add SID, action and span tokens to any HF tokenizer + causal LM (`chatrec tokenizer extend`).

    TokenMap                     token ids of span markers, codes ("L_C") and actions; JSON in model/
    extend(model, tok, ...)      add missing tokens, resize (multiple of 64), init rows (mean|semantic)
    extend_bundle(bundle, ...)   the stage: BUNDLE/model/ + chatrec_tokens.json + trie.npz + manifest
    load_extended(model_dir)     (model, tokenizer, token_map)
    build_trie(sids, token_map)  chatrec.trie.ItemTrie over the items' code token ids
    sid_token_ids(codes, map)    code token ids of one item (no span markers)

Torch and transformers are imported inside the functions that need them.
"""

from tokenizer_ext.bundle_io import (
    ExtendConfig,
    build_trie,
    check_token_map,
    extend_bundle,
    level_sizes,
    load_extended,
    sid_token_ids,
)
from tokenizer_ext.extend import INIT_METHODS, extend, semantic_code_vectors, wanted_tokens
from tokenizer_ext.token_map import TokenMap

__all__ = [
    "INIT_METHODS",
    "ExtendConfig",
    "TokenMap",
    "build_trie",
    "check_token_map",
    "extend",
    "extend_bundle",
    "level_sizes",
    "load_extended",
    "semantic_code_vectors",
    "sid_token_ids",
    "wanted_tokens",
]
