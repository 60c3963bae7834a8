"""The transformers engine scores beams over one shared prompt cache, exactly as separate forwards would."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chatrec.testing import smollm2_tokenizer, tiny_llama  # noqa: E402
from serve.engines import transformers_engine as te  # noqa: E402
from serve.engines.transformers_engine import TransformersEngine  # noqa: E402


@pytest.fixture()
def engine() -> TransformersEngine:
    tok = smollm2_tokenizer()
    return TransformersEngine.from_model(tiny_llama(tok, layers=3), tok)


def reference(engine: TransformersEngine, prefix: list[int], cont: list[int], cols: list[int]) -> np.ndarray:
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.as_tensor([prefix + cont])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)[cols].numpy()


@pytest.mark.parametrize("conts", [
    [[], [5], [7]],                        # level 1 beside level 2
    [[5, 9], [7, 3], [7, 4], [11, 12]],    # equal lengths, shared first tokens
    [[5], [7, 3, 2], [], [8, 8]],          # mixed lengths
])
def test_tree_scoring_equals_one_forward_per_continuation(engine: TransformersEngine, conts) -> None:
    prefix = [1, 17, 300, 42, 9, 8]
    cols = [5, 7, 100, 2001]
    got = engine.next_token_logprobs(prefix, conts, cols)
    want = np.stack([reference(engine, prefix, c, cols) for c in conts])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the cached prefix is cropped back: a second call on the same prefix gives the same answer
    np.testing.assert_allclose(engine.next_token_logprobs(prefix, conts, cols), got, atol=1e-6)
    (cache, _), = engine._prefixes.values()
    assert cache.get_seq_length() == len(prefix)
    # raw scores over the asked rows only: the log-probs up to one constant per row
    scores = engine.next_token_scores(prefix, conts, cols)
    shift = scores - got
    np.testing.assert_allclose(shift, shift[:, :1].repeat(len(cols), axis=1), atol=1e-4)


def test_prefix_cache_is_not_copied_per_beam(engine: TransformersEngine) -> None:
    """200 beams over a 300-token prompt: the cache holds P + B*L tokens, never B*(P+L)."""
    prefix = list(range(1, 301))
    seen: list[int] = []
    orig = engine._tree_forward

    def spy(cache, n_prefix, conts):
        out = orig(cache, n_prefix, conts)
        seen.append(cache.get_seq_length())
        return out

    engine._tree_forward = spy  # type: ignore[method-assign]
    engine.next_token_logprobs(prefix, [[5, 6]] * 200, [5])
    assert seen == [300]
    (cache, _), = engine._prefixes.values()
    assert cache.layers[0].keys.shape[0] == 1  # batch 1: one copy of the prompt


def count_decoder_tokens(engine: TransformersEngine, monkeypatch) -> list[int]:
    """The input length of every call of the engine's decoder from now on (appended as they happen)."""
    calls: list[int] = []
    base = engine._base()
    orig = base.forward

    def counting(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[1]))
        return orig(*args, **kwargs)

    monkeypatch.setattr(base, "forward", counting)
    return calls


def test_prompt_caches_are_reused_extended_and_bounded(engine: TransformersEngine, monkeypatch) -> None:
    calls = count_decoder_tokens(engine, monkeypatch)
    turn1 = list(range(10, 60))
    first = engine.next_token_logprobs(turn1, [[]], [5, 6])
    engine.next_token_logprobs(turn1, [[]], [5, 6])  # the same history again: no prompt token recomputed
    assert calls == [50]
    turn2 = turn1 + [70, 71, 72]
    got = engine.next_token_logprobs(turn2, [[]], [5, 6])  # the next turn: only its 3 new tokens
    assert calls == [50, 3]
    np.testing.assert_allclose(got[0], reference(engine, turn2, [], [5, 6]), atol=1e-4)
    np.testing.assert_allclose(first[0], reference(engine, turn1, [], [5, 6]), atol=1e-4)
    monkeypatch.setattr(te, "PREFIX_CACHE_TOKENS", 120)
    for start in (100, 200, 300):
        engine.next_token_logprobs(list(range(start, start + 50)), [[]], [5])
    assert sum(len(k) for k in engine._prefixes) <= 120


def test_chat_generation_reuses_the_cached_prompt_and_leaves_it_intact(engine: TransformersEngine, monkeypatch) -> None:
    """A chat turn decodes on the LRU's prompt cache: the same tokens as the batched decode without
    it, a next turn computes only its new prompt tokens, and a stopped stream leaves the cache whole."""
    from chatrec.engine import GenerationParams

    params = GenerationParams(max_tokens=6, constrained=False, ignore_eos=True)
    turn1 = list(range(10, 60))
    want1 = engine.generate_batch([turn1], params)[0]  # the uncached batched path
    calls = count_decoder_tokens(engine, monkeypatch)
    assert [t.token_id for t in engine.generate(turn1, params)] == want1
    assert calls == [50] + [1] * 5  # the prompt once, then one token per step
    turn2 = turn1 + want1 + [70, 71]  # the next turn extends the first prompt
    calls.clear()
    got2 = [t.token_id for t in engine.generate(turn2, params)]
    assert calls[0] == len(want1) + 2  # only the reply and the new words are computed
    assert got2 == engine.generate_batch([turn2], params)[0]
    stream = engine.generate(turn2, params)
    next(stream)
    stream.close()  # the client went away after one token
    n, cache, _ = engine._prefix(turn2)
    assert n == len(turn2) and cache.get_seq_length() == len(turn2)


def test_a_stream_may_resume_on_another_thread(engine: TransformersEngine) -> None:
    """The server pulls each streamed token on whichever threadpool thread is free. Grad and
    inference mode are per thread, so a generator that entered `inference_mode` on one thread and
    resumes on another must not depend on it (CI saw "internal error: RuntimeError" mid-stream)."""
    from concurrent.futures import ThreadPoolExecutor

    from chatrec.engine import GenerationParams

    prompt = [1, 17, 300, 42, 9, 8]
    params = GenerationParams(max_tokens=12, temperature=0.0, constrained=False, ignore_eos=True)
    want = [s.token_id for s in engine.generate(prompt, params)]
    stream = engine.generate(prompt, params)
    got = []
    for _ in range(len(want)):  # each step on a fresh thread, none of them in inference mode
        with ThreadPoolExecutor(1) as pool:
            got.append(pool.submit(next, stream).result().token_id)
    assert got == want
    stream.close()
    (cache, _), = engine._prefixes.values()
    assert cache.get_seq_length() == len(prompt)  # cropped back to the prompt
