"""Property: for any mix of good, bad, malformed and blank JSONL lines, rows in = kept + quarantined."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatrec.data import validate_files

GOOD = {"user_id": "u1", "item_id": "m1", "action": "click", "timestamp": "2024-01-01T00:00:00Z"}
values = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.floats(allow_nan=False),
                   st.text(max_size=8), st.sampled_from(["m1", "m2", "like", "2024-02-30", "1704103200"]),
                   st.lists(st.integers(), max_size=2))
record = st.fixed_dictionaries({}, optional={k: values for k in GOOD}).map(lambda r: {**GOOD, **r})
line = st.one_of(record.map(json.dumps), st.sampled_from(["{oops", "[1, 2]", "", "   ", '"text"', "null"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, min_size=1, max_size=25))
def test_rows_in_equals_kept_plus_quarantined(lines: list[str]) -> None:
    lines = [json.dumps(GOOD), *lines]  # at least one readable row, so the file is never "empty"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_text("\n".join(lines) + "\n")
        report = validate_files(interactions=[path], quarantine_dir=Path(tmp) / "q")
        (table,) = report.tables
        non_blank = sum(1 for x in lines if x.strip())
        assert table.rows_in == non_blank == table.rows_kept + table.rows_quarantined
        quarantined = Path(tmp) / "q" / "events.jsonl.jsonl"
        n_lines = len(quarantined.read_text().splitlines()) if quarantined.exists() else 0
        assert n_lines == table.rows_quarantined
        assert all(p.loc is not None and 1 <= p.loc <= len(lines) for p in report.problems)
