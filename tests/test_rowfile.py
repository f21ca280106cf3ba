"""The one row reader: each format's adapter, and the commands that read rows through it."""

from __future__ import annotations

import csv
import json

import pytest

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.rowfile import read_rows


def test_jsonl_rows_keep_their_line_numbers_and_bad_lines_say_why(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('\ufeff{"a": 1}\n\n{"a": \n[1, 2]\n', encoding="utf-8")  # BOM, blank line, bad JSON, non-object
    got = list(read_rows(p))
    assert [(r.line, r.where, r.row) for r in got] == [
        (1, "d.jsonl:1", {"a": 1}),
        (3, "d.jsonl:3", None),
        (4, "d.jsonl:4", [1, 2]),
    ]
    assert got[1].error == "not valid JSON (Expecting value)" and got[0].error is None


@pytest.mark.parametrize("suffix, delimiter", [(".csv", ","), (".tsv", "\t")], ids=["csv", "tsv"])
def test_delimited_rows_match_the_csv_module(tmp_path, suffix, delimiter):
    rows = [{"question": 'a "quoted", multi\nline one', "answer": "B"}, {"question": "two", "answer": ""}]
    p = tmp_path / f"d{suffix}"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, [" question ", "answer"], delimiter=delimiter)
        w.writeheader()
        w.writerows({" question ": r["question"], "answer": r["answer"]} for r in rows)
    got = list(read_rows(p))
    assert [r.row for r in got] == rows  # header names stripped
    assert [r.where for r in got] == [f"d{suffix}:2", f"d{suffix}:3"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "CSV has no header row"),
        (b"question\n\xff\xfe\n", r"cannot read \(UnicodeDecodeError\)"),
    ],
    ids=["empty-csv", "not-utf8"],
)
def test_unreadable_files_are_one_bad_input(tmp_path, content, message):
    p = tmp_path / "d.csv"
    p.write_bytes(content)
    with pytest.raises(BadInput, match=message):
        list(read_rows(p))


def test_rl_questions_name_their_bad_lines(tmp_path):
    from medgemma_toolkit.train.rl import load_mcq

    good = {"question": "Q?", "options": ["x", "y"], "answer": "B"}
    p = tmp_path / "mcq.jsonl"
    p.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "answer": "Z"}), "[1]", ""]))
    with pytest.raises(BadInput, match=r"3 bad line\(s\).*lines 2, 3, 4"):
        load_mcq(p)
    p.write_text(json.dumps(good) + "\n")
    assert load_mcq(p)[0].answer == "B"


def test_training_csv_rows_are_never_chat_examples(tmp_path):
    from medgemma_toolkit.train.data import load_rows

    p = tmp_path / "d.csv"
    p.write_text("question,answer,messages\nWhat?,yes,ignored\n")
    examples, kind = load_rows(p, "vqa")
    assert kind == "rows" and examples[0].answer == "yes" and examples[0].origin == "d.csv:2"


# -- hostile rows (issue 24) ------------------------------------------------------------------------------------------
def test_a_row_longer_than_the_cap_is_an_error_read_in_bounded_pieces(tmp_path):
    import tracemalloc

    from medgemma_toolkit.rowfile import MAX_ROW_CHARS

    p = tmp_path / "rows.jsonl"
    with open(p, "w") as f:  # a 40 MB row between two good ones (the attack was 300 MB: 19.7 GB, then OOM)
        f.write('{"question": "a"}\n{"question": "')
        for _ in range(40):
            f.write("x" * 1024**2)
        f.write('"}\n{"question": "b"}\n')
    tracemalloc.start()
    rows = list(read_rows(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(r.line, r.row, r.error) for r in rows] == [
        (1, {"question": "a"}, None),
        (2, None, f"line 2 is longer than {MAX_ROW_CHARS:,} characters"),
        (3, {"question": "b"}, None),
    ]
    assert peak < 2.5 * MAX_ROW_CHARS, f"{peak / 1024**2:.0f} MiB held at once"


def test_deep_json_rows_are_one_line_errors(tmp_path, cli):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"question": "ok"}\n' + "[" * 200_000 + "\n")
    rows = list(read_rows(p))
    assert rows[1].error == "the row is nested more than 64 levels deep"
    r = cli("batch", "--input", str(p), "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "RecursionError" not in r.stderr
    assert "rows.jsonl:2" in r.stderr and "nested more than 64 levels" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    table = tmp_path / "rows.csv"
    table.write_text("question,answer\n" + "x" * 200_000 + ",y\n")  # over csv's own field limit
    with pytest.raises(BadInput, match="not a readable CSV/TSV file"):
        list(read_rows(table))
