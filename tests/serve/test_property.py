"""Property: 1,000 constrained generations from a tiny random model contain 0 invalid SIDs.

Random prompts (free text, a history span, a just-opened span or a partial span), random
per-batch filters, sampling at temperature 1; every complete span must name an allowed catalog
item and no code token may appear outside a span. Run on both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chatrec.constrained import check_spans
from chatrec.engine import GenerationParams
from chatrec.recommender import Recommender

N_GENERATIONS = 1000
BATCH = 250


@pytest.fixture(scope="module", params=["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def recommender(request: pytest.FixtureRequest, serve_bundle: Path) -> Iterator[Recommender]:
    if request.param == "vllm":
        pytest.importorskip("vllm")
    rec = Recommender.from_bundle(serve_bundle, engine=request.param)
    yield rec
    rec.close()


def random_prompts(rec: Recommender, n: int, rng: np.random.Generator) -> list[tuple[list[int], list[int], bool]]:
    """(prompt ids, code prefix the prompt ends inside, whether it ends inside a span)."""
    trie, span = rec.core.trie, rec.core.span
    out = []
    for _ in range(n):
        text = rng.integers(100, 40_000, size=int(rng.integers(2, 16))).tolist()
        kind = int(rng.integers(0, 4))
        seq = trie.sequences[int(rng.integers(trie.n_items))].tolist()
        if kind == 0:
            out.append((text, [], False))
        elif kind == 1:  # a closed history span, then text
            out.append(([*text, span.sid_begin, *seq, span.sid_end, *text[:3]], [], False))
        elif kind == 2:  # retrieval-style: ends with <|sid_begin|>
            out.append(([*text, span.sid_begin], [], True))
        else:  # ends inside a valid partial span
            cut = int(rng.integers(1, trie.depth))
            out.append(([*text, span.sid_begin, *seq[:cut]], seq[:cut], True))
    return out


def test_constrained_generations_never_name_an_invalid_or_filtered_item(recommender: Recommender) -> None:
    rec = recommender
    rng = np.random.default_rng(1234)
    n_items = rec.core.trie.n_items
    invalid = named = 0
    for batch in range(N_GENERATIONS // BATCH):
        allowed = rng.random(n_items) > 0.3
        if batch == 1:
            allowed = rec.allowed(categories=["Comedy", "Drama"])
        prompts = random_prompts(rec, BATCH, rng)
        # a partial span outside the filter cannot be completed; keep prompts consistent with it
        prompts = [p for p in prompts if not p[1] or len(rec.core.trie.items_under(p[1], allowed))]
        params = GenerationParams(max_tokens=6, temperature=1.0, seed=batch, allowed_items=allowed)
        outs = rec.engine.generate_batch([p for p, _, _ in prompts], params)
        for (_prompt, prefix, in_span), out in zip(prompts, outs, strict=True):
            check = check_spans(rec.core, out, start_in_span=in_span, start_prefix=prefix, allowed=allowed)
            invalid += check.invalid
            named += len(check.items)
            assert all(allowed[i] for i in check.items)
    assert invalid == 0
    assert named >= N_GENERATIONS // 3  # the property was exercised on many spans


def test_unconstrained_generation_is_not_trivially_valid(recommender: Recommender) -> None:
    """Control: without the constraint the same model writes spans that name no item."""
    rec = recommender
    rng = np.random.default_rng(7)
    prompts = [p for p, _, in_span in random_prompts(rec, 200, rng) if in_span]
    outs = rec.engine.generate_batch(prompts, GenerationParams(max_tokens=5, temperature=1.0, seed=0,
                                                               constrained=False))
    bad = sum(check_spans(rec.core, o, start_in_span=True).invalid + (check_spans(rec.core, o, start_in_span=True)
              .open_span) for o in outs)
    assert bad > len(outs) // 2


def test_vllm_processor_per_request_args(recommender: Recommender) -> None:
    """The v1 processor as vLLM's own server drives it: `extra_args` with item ids and categories
    (no registered core or mask: loaded from the model folder), and `validate_params` errors."""
    if recommender.engine.name != "vllm":
        pytest.skip("vLLM processor only")
    from vllm import SamplingParams

    from serve.engines.vllm_engine import EngineRequestError
    from serve.vllm_processor import ChatrecLogitsProcessor

    with pytest.raises(ValueError, match="list of strings"):
        ChatrecLogitsProcessor.validate_params(SamplingParams(extra_args={"chatrec": {"exclude": 5}}))
    with pytest.raises(ValueError, match="unknown keys"):
        ChatrecLogitsProcessor.validate_params(SamplingParams(extra_args={"chatrec": {"nope": []}}))
    ChatrecLogitsProcessor.validate_params(SamplingParams())  # no opt-in: untouched
    rec = recommender
    engine = rec.engine
    with pytest.raises(EngineRequestError, match="list of strings"):
        engine.generate_raw([[1, 2, 3]], SamplingParams(max_tokens=2, extra_args={"chatrec": {"exclude": 5}}))
    excluded = [str(x) for x in rec.core.trie.item_ids[:10]]
    allowed = rec.allowed(excluded, ["Comedy"])
    prompts = [p for p, prefix, in_span in random_prompts(rec, 96, np.random.default_rng(3)) if in_span and not prefix]
    sp = SamplingParams(max_tokens=5, temperature=1.0, detokenize=False,
                        extra_args={"chatrec": {"exclude": excluded, "categories": ["Comedy"]}})
    named = 0
    for out in engine.generate_raw(prompts, sp):
        check = check_spans(rec.core, out, start_in_span=True, allowed=allowed)
        assert check.invalid == 0
        named += len(check.items)
    assert named >= len(prompts) // 2


def test_span_logits_processor_plugs_into_hf_generate(recommender: Recommender) -> None:
    """The transformers `LogitsProcessor` wrapper works inside `model.generate` as well."""
    if recommender.engine.name != "transformers":
        pytest.skip("transformers processor only")
    import torch
    from transformers import LogitsProcessorList

    from serve.engines.transformers_engine import SpanLogitsProcessor

    rec = recommender
    allowed = rec.allowed(categories=["Horror"])
    prompt = rec.retrieval_prompt([("m1", "like")], request="Something scary, please.")  # ends in <|sid_begin|>
    ids = torch.tensor([prompt] * 16)
    out = rec.engine.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=True, top_k=0,
        logits_processor=LogitsProcessorList([SpanLogitsProcessor(rec.core, allowed)]),
        pad_token_id=rec.engine.pad_id)
    for row in out[:, len(prompt):].tolist():
        check = check_spans(rec.core, row, start_in_span=True, allowed=allowed)
        assert check.invalid == 0 and len(check.items) == 1


def test_vllm_beam_level_runs_as_one_batched_step(recommender: Recommender) -> None:
    """A beam level's scoring requests are added under one hold of the engine lock, so the step
    thread schedules all of them in its first step (not split over the steps that would start while
    the rest were still being added), and each gets its own scores."""
    if recommender.engine.name != "vllm":
        pytest.skip("vLLM engine only")
    rec = recommender
    engine = rec.engine
    core_engine = engine.engine
    seen: list[int] = []
    step = core_engine.step

    def counting_step():  # type: ignore[no-untyped-def]
        seen.append(core_engine.get_num_unfinished_requests())
        return step()

    prompt = rec.retrieval_prompt([("m1", "like"), ("m2", "like")])
    conts = [[int(t)] for t in rec.core.trie.allowed_next([])[:12]]
    ids = sorted({int(t) for c in conts for t in rec.core.trie.allowed_next(c)})
    core_engine.step = counting_step
    try:
        scores = engine.next_token_logprobs(prompt, conts, ids)
    finally:
        core_engine.step = step
    assert seen and seen[0] == len(conts)
    assert scores.shape == (len(conts), len(ids)) and np.isfinite(scores).all()
    for i in (0, len(conts) - 1):  # each beam's row is its own: as when it is scored alone
        assert np.allclose(scores[i], engine.next_token_logprobs(prompt, [conts[i]], ids)[0], atol=1e-4)
