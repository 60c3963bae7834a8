"""The token format shared by data building, tokenizer extension, decoding and serving.

    <|sid_begin|><|s0_17|><|s1_203|><|s2_88|><|s3_0|><|sid_end|>

Level-specific code tokens `<|sL_C|>`; the last level disambiguates colliding items, so one
complete SID names exactly one item. Action tokens `<|act_NAME|>` come from the log vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
SPAN_TOKENS = (SID_BEGIN, SID_END)

_CODE_RE = re.compile(r"<\|s(\d+)_(\d+)\|>")
_ACTION_RE = re.compile(r"<\|act_([a-z0-9_]+)\|>")
SID_SPAN_RE = re.compile(re.escape(SID_BEGIN) + r"((?:<\|s\d+_\d+\|>)+)" + re.escape(SID_END))
_ACTION_NAME_RE = re.compile(r"^[a-z0-9_]+$")


def code_token(level: int, code: int) -> str:
    """`<|sL_C|>`: code `code` at level `level`."""
    return f"<|s{level}_{code}|>"


def action_token(action: str) -> str:
    """`<|act_NAME|>` for a log action such as `like`."""
    if not _ACTION_NAME_RE.match(action):
        raise ValueError(f"action names are lower-case letters, digits and '_', got {action!r}")
    return f"<|act_{action}|>"


def sid_string(codes: Sequence[int]) -> str:
    """The full span for one item's code tuple."""
    return SID_BEGIN + "".join(code_token(level, int(c)) for level, c in enumerate(codes)) + SID_END


def parse_code_token(token: str) -> tuple[int, int] | None:
    """(level, code) of a code token, or None."""
    m = _CODE_RE.fullmatch(token)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_action_token(token: str) -> str | None:
    m = _ACTION_RE.fullmatch(token)
    return m.group(1) if m else None


def parse_sid(span: str) -> tuple[int, ...]:
    """Codes of a span `<|sid_begin|>...<|sid_end|>`; raises ValueError when malformed."""
    m = SID_SPAN_RE.fullmatch(span)
    if not m:
        raise ValueError(f"not a SID span: {span!r}")
    codes = [(int(a), int(b)) for a, b in _CODE_RE.findall(m.group(1))]
    if [lvl for lvl, _ in codes] != list(range(len(codes))):
        raise ValueError(f"SID levels must run 0..L-1 in order: {span!r}")
    return tuple(c for _, c in codes)


def find_sid_spans(text: str) -> list[tuple[int, int, tuple[int, ...]]]:
    """Every well-formed span in `text` as (start, end, codes)."""
    out = []
    for m in SID_SPAN_RE.finditer(text):
        try:
            out.append((m.start(), m.end(), parse_sid(m.group(0))))
        except ValueError:
            continue
    return out


EVENT_RE = re.compile(r"<\|act_([a-z0-9_]+)\|>((?:<\|s\d+_\d+\|>)+)")


def find_events(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every compact history event `<|act_A|><|s0_C|>...` in `text` as (action, codes), in order."""
    out = []
    for m in EVENT_RE.finditer(text):
        codes = [(int(a), int(b)) for a, b in _CODE_RE.findall(m.group(2))]
        if [lvl for lvl, _ in codes] == list(range(len(codes))):
            out.append((m.group(1), tuple(c for _, c in codes)))
    return out


def code_tokens_for(levels: Iterable[tuple[int, int]]) -> list[str]:
    """Code tokens for (level, code-count) pairs, level by level."""
    return [code_token(level, c) for level, n in levels for c in range(n)]


_WORD_JOINER = "\u2060"  # invisible, and no tokenizer's added token contains it
_SPECIAL_PATTERNS: dict[int, tuple[int, re.Pattern[str] | None]] = {}


def escape_special_tokens(text: str, tokenizer: object) -> str:
    """`text` with every added/special token string of `tokenizer` broken by a word joiner.

    Text a person typed (a chat message, a request) goes through the chat template and the
    tokenizer, which would turn `<|im_start|>system`, `<|act_like|>` or a SID span typed into it
    into real tokens: a forged system turn or history. History and SIDs reach the model only
    through structured fields, so every added-token string in typed text is split after its
    first character and stays ordinary text.
    """
    vocab = getattr(tokenizer, "added_tokens_decoder", None) or {}
    key = id(tokenizer)
    cached = _SPECIAL_PATTERNS.get(key)
    if cached is None or cached[0] != len(vocab):
        names = [n for n in sorted({str(getattr(t, "content", t)) for t in vocab.values()}, key=len, reverse=True) if len(n) > 1]
        pattern = re.compile("|".join(map(re.escape, names))) if names else None
        cached = _SPECIAL_PATTERNS[key] = (len(vocab), pattern)
    pattern = cached[1]
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + _WORD_JOINER + m.group(0)[1:], text)
