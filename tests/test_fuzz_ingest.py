"""Property-based fuzzing of the ingest stage: malformed native rows of every adapter and file format never raise,
every row read is kept (valid per the schema) or quarantined with a reason, and read = kept + dropped."""

import csv
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.flows.stages.ingest import IngestReason, ingest_source
from m3e_hq.schemas import DROPPED_SCHEMA, M3E_HQ_SCHEMA, validate_table
from m3e_hq.sources.catalog import default_catalog
from m3e_hq.sources.readers import SourceFile

CATALOG = default_catalog()
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = set(IngestReason)

HUGE = "长" * 200_000
DEEP = "[" * 500 + "]" * 500
CONTROL = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)])) + "\u200b\u200d\u2060\ufeff\u2028"
LONE_SURROGATE_BYTES = b"\xed\xa0\x80"  # U+D800 as (invalid) UTF-8

# Pieces of text still encoded: literal escapes, entities (double-encoded, of no character), tags, a backslash.
ENCODED = ["\\u200b", "\\u003d", "\\ud800", "\\u4e2d", "\\", "&nbsp;", "&amp;", "&amp;lt;", "&#0;", "&#x7;", "&#xd800;",
           "&#13;", "&#x200b;", "<br clear=\"all\">", "<p>", "</p>", "&lt;br&gt;", "A&B", "<", "\u3000", "中", "a"]

# Strings: ordinary, control characters, lone surrogates, whitespace only, huge, text still encoded.
strings = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=CONTROL + "ab中文 \n\t", max_size=20),
    st.lists(st.sampled_from(ENCODED), max_size=8).map("".join),
    st.sampled_from(["", " ", "\u3000\n\t", "\ud800", "a\udcffb", HUGE, "中" * 100_001]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), strings)
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=8)
deep = st.integers(1, 500).map(lambda n: json.loads("[" * n + "]" * n))


def field_value():
    return st.one_of(strings, junk, deep)


def record(fields: list[str]):
    """A dict with some of `fields` (any type) plus extra keys."""
    return st.fixed_dictionaries({}, optional={f: field_value() for f in fields}).flatmap(
        lambda base: st.dictionaries(st.text(max_size=6), junk, max_size=2).map(lambda extra: {**extra, **base}))


def to_json_bytes(value, ensure_ascii: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


# Byte-level damage of one serialised line or document.
def damaged(data: bytes):
    return st.one_of(
        st.integers(0, max(len(data) - 1, 0)).map(lambda n: data[:n]),  # truncated
        st.integers(0, len(data)).map(lambda n: data[:n] + b"\xff\xfe" + data[n:]),  # invalid UTF-8
        st.integers(0, len(data)).map(lambda n: data[:n] + LONE_SURROGATE_BYTES + data[n:]),
        st.integers(0, len(data)).map(lambda n: data[:n] + b"\x00\x07\x1b" + data[n:]),
    )


def jsonl_line(fields: list[str]):
    """One line of a JSON Lines file: a record, damaged or not, a non-object, raw bytes or deep nesting."""
    serialised = st.tuples(record(fields), st.booleans()).map(lambda t: to_json_bytes(*t))
    return st.one_of(
        serialised,
        serialised.flatmap(damaged),
        junk.map(lambda v: to_json_bytes(v, False)),
        st.binary(max_size=40),
        st.sampled_from([DEEP.encode(), b"[" * 10_000, b"1" * 5_000, b"{" * 500, b"", b"   ", b"\xff\xfe\xfd",
                         LONE_SURROGATE_BYTES, b'{"a": "\\ud800"}']),
    )


def run_ingest(name: str, files: dict[str, bytes], split: str = "train") -> tuple[StageCounts, list[dict]]:
    """Ingest the given native files of source `name`; check the invariants; return counts and kept rows."""
    source = CATALOG.get(name)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = []
        for relpath, data in files.items():
            path = root / "native" / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if not relpath.endswith(".tables.json"):
                inputs.append(SourceFile(path, relpath, split))
        counts = ingest_source(source, inputs, root / "out")  # must never raise
        counts.check()
        assert counts.read == counts.kept + sum(counts.dropped.values())
        kept = pq.read_table(counts.kept_path)
        dropped = pq.read_table(counts.dropped_path)
        validate_table(kept, M3E_HQ_SCHEMA)
        assert kept.schema.equals(M3E_HQ_SCHEMA, check_metadata=False)
        assert dropped.schema.equals(DROPPED_SCHEMA, check_metadata=False)
        assert (kept.num_rows, dropped.num_rows) == (counts.kept, counts.dropped_total)
        reasons = dropped.column("reason").to_pylist()
        assert all(isinstance(r, str) and r for r in reasons)
        assert set(reasons) <= REASONS, set(reasons) - REASONS
        assert dict(Counter(reasons)) == counts.dropped
        assert all(row["source"] == name and row["locator"] for row in dropped.to_pylist())
        rows = kept.to_pylist()
    for row in rows:
        for side in ("text", "text_pos"):
            value = row[side]
            assert value and value == value.strip() and len(value) <= 100_000
            value.encode("utf-8")  # no lone surrogates
            assert not any(c in value for c in "\x00\x07\x1b\r\u200b\ufeff")
            assert "&nbsp;" not in value and "<br" not in value  # decoded, or quarantined as encoded_text
        assert row["source"] == name and row["split"] == split
    return counts, rows


def pairs(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["text"], r["text_pos"]) for r in rows}


def valid_pairs(n: int) -> list[tuple[str, str]]:
    return [(f"有效问题{i}", f"有效回答{i}") for i in range(n)]


def interleave(junk_items: list, valid_items: list, seed: int) -> list:
    """The valid items placed among the junk ones at positions fixed by `seed`."""
    out = list(junk_items)
    for i, item in enumerate(valid_items):
        out.insert((seed * (i + 7)) % (len(out) + 1), item)
    return out


# --- flat, JSON Lines (firefily: input -> target) ---------------------------------------------------------------

@FUZZ
@given(lines=st.lists(jsonl_line(["input", "target"]), max_size=8), n_valid=st.integers(0, 3),
       seed=st.integers(0, 1000), gap=st.sampled_from([b"\n", b"\r\n", b"\n\n  \n"]), final=st.booleans())
def test_flat_jsonl_never_raises_and_accounts_for_every_line(lines, n_valid, seed, gap, final):
    valid = valid_pairs(n_valid)
    valid_lines = [to_json_bytes({"input": q, "target": a, "extra": [1, {"x": None}]}, i % 2 == 0)
                   for i, (q, a) in enumerate(valid)]
    data = gap.join(interleave(lines, valid_lines, seed)) + (gap if final else b"")
    counts, rows = run_ingest("firefily", {"f.jsonl": data})
    assert set(valid) <= pairs(rows)
    assert counts.kept >= n_valid


# --- flat, JSON Lines with explode (hc3_chinese: one pair per answer) -------------------------------------------

@FUZZ
@given(lines=st.lists(jsonl_line(["question", "human_answers", "chatgpt_answers"]), max_size=6),
       n_valid=st.integers(0, 2), seed=st.integers(0, 1000))
def test_flat_jsonl_explode_never_raises(lines, n_valid, seed):
    valid = valid_pairs(n_valid)
    valid_lines = [to_json_bytes({"question": q, "human_answers": [a], "chatgpt_answers": None}, False)
                   for q, a in valid]
    _, rows = run_ingest("hc3_chinese", {"all.jsonl": b"\n".join(interleave(lines, valid_lines, seed))})
    assert set(valid) <= pairs(rows)


# --- flat, JSON document (alpaca_gpt4: a list of records) -------------------------------------------------------

@FUZZ
@given(records=st.lists(st.one_of(record(["instruction", "input", "output"]), junk), max_size=6),
       n_valid=st.integers(0, 3), seed=st.integers(0, 1000), ensure_ascii=st.booleans(), data=st.data())
def test_flat_json_document_never_raises(records, n_valid, seed, ensure_ascii, data):
    valid = valid_pairs(n_valid)
    document = interleave(records, [{"instruction": q, "input": "", "output": a} for q, a in valid], seed)
    raw = to_json_bytes(document, ensure_ascii)
    if data.draw(st.booleans(), label="damage"):
        raw = data.draw(damaged(raw), label="damaged")
        counts, _ = run_ingest("alpaca_gpt4", {"a.json": raw})
    else:  # a lone surrogate quarantines only the records whose texts hold it
        counts, rows = run_ingest("alpaca_gpt4", {"a.json": raw})
        assert counts.read == len(document)
        assert set(valid) <= pairs(rows)


@given(raw=st.one_of(st.binary(max_size=60), st.sampled_from(
    [b"", b"{}", b"null", b"42", b'"x"', DEEP.encode(), b"[" * 10_000, b"[" + b"1" * 5000 + b"]",
     b'{"a": [', b"\xef\xbb\xbf[]", b"[\xff]"])))
@FUZZ
def test_any_bytes_as_a_json_document_never_raise(raw):
    run_ingest("alpaca_gpt4", {"a.json": raw})
    run_ingest("Chinese-SQuAD", {"squad-zen/train.json": raw})


# --- flat, CSV (lawzhidao: title + question -> reply) -----------------------------------------------------------

csv_cells = st.one_of(st.text(max_size=15), st.text(alphabet=CONTROL.replace("\x00", "") + '中,"\n\r ', max_size=15),
                      st.sampled_from(["", "\udcff\udcfe", "\udced\udca0\udc80", "中" * 100_001]))


@FUZZ
@given(rows=st.lists(st.lists(csv_cells, max_size=6), max_size=8), header=st.sampled_from(
    [["title", "question", "reply"], ["reply", "title"], ["x", "title", "question", "reply", "y"], ["title"]]),
    n_valid=st.integers(0, 3), seed=st.integers(0, 1000))
def test_flat_csv_never_raises(rows, header, n_valid, seed):
    valid = valid_pairs(n_valid)
    valid_rows = [[{"title": q, "question": "", "reply": a}.get(h, "") for h in header] for q, a in valid]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([header, *interleave(rows, valid_rows, seed)])
    # undecodable bytes: cells holding surrogate escapes are written back as the raw bytes
    _, kept = run_ingest("lawzhidao", {"l.csv": buffer.getvalue().encode("utf-8", "surrogateescape")})
    if "title" in header and "reply" in header:
        assert set(valid) <= pairs(kept)


@FUZZ
@given(lines=st.lists(st.binary(max_size=40), max_size=8))
def test_raw_bytes_as_csv_never_raise(lines):
    run_ingest("lawzhidao", {"l.csv": b"title,question,reply\n" + b"\n".join(lines)})


@FUZZ
@given(n=st.integers(1, 30), data=st.data())
def test_csv_unterminated_quotes_quarantine_their_own_line_only(n, data):
    """Any set of rows whose reply opens a quote never closed: each is one invalid_csv, every other row is kept."""
    open_rows = data.draw(st.sets(st.integers(0, n - 1)), label="rows with an open quote")
    lines = ["title,question,reply"] + [f'有效问题{i},,{chr(34) if i in open_rows else ""}有效回答{i}' for i in range(n)]
    counts, rows = run_ingest("lawzhidao", {"l.csv": ("\n".join(lines) + "\n").encode()})
    assert counts.read == n and counts.dropped == ({"invalid_csv": len(open_rows)} if open_rows else {})
    assert pairs(rows) == {pair for i, pair in enumerate(valid_pairs(n)) if i not in open_rows}


def test_csv_field_over_the_csv_module_limit_is_quarantined_and_the_file_read_on():
    """A 200k-character cell exceeds csv's default field size limit: its row is quarantined as too long, and the
    rows after it are still read."""
    data = "title,question,reply\n有效问题0,,有效回答0\n" + f"t,q,{HUGE}\n" + "有效问题1,,有效回答1\n"
    counts, rows = run_ingest("lawzhidao", {"l.csv": data.encode()})
    assert {("有效问题0", "有效回答0"), ("有效问题1", "有效回答1")} <= set(pairs(rows))
    assert counts.read == 3 and counts.dropped == {"text_too_long": 1}


# --- flat, Parquet (cmrc2018: question -> context; ocnli: label-filtered sentence pairs) ------------------------

column_types = {
    "string": (pa.string(), st.one_of(st.none(), strings)),
    "int": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "float": (pa.float64(), st.one_of(st.none(), st.floats())),
    "bool": (pa.bool_(), st.one_of(st.none(), st.booleans())),
    "list": (pa.list_(pa.string()), st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=5)),
                                                                   max_size=3))),
    "struct": (pa.struct([("a", pa.string())]), st.one_of(st.none(), st.fixed_dictionaries(
        {"a": st.one_of(st.none(), st.text(max_size=5))}))),
    "binary": (pa.binary(), st.one_of(st.none(), st.binary(max_size=10))),
    # past year 9999 too: Python cannot hold those (unreadable_value)
    "timestamp": (pa.timestamp("ms"), st.one_of(st.none(), st.integers(-(2**62), 2**62))),
    "date": (pa.date32(), st.one_of(st.none(), st.integers(-(2**30), 2**30))),
}


@st.composite
def parquet_table(draw, fields: list[str]):
    n = draw(st.integers(0, 6))
    columns = {}
    for name in [*fields, "extra"]:
        if name != fields[0] and draw(st.booleans()):
            continue  # missing column
        kind = draw(st.sampled_from(sorted(column_types)))
        arrow_type, values = column_types[kind]
        columns[name] = (arrow_type, draw(st.lists(values, min_size=n, max_size=n)))
    return columns


def write_parquet(columns: dict) -> bytes:
    arrays = [pa.array(values, type=arrow_type) for arrow_type, values in columns.values()]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), sink)
    return sink.getvalue()


def safe_values(values: list, arrow_type: pa.DataType) -> list:
    """Strings holding lone surrogates cannot go into Arrow: they stand for the invalid UTF-8 the reader never sees."""
    if arrow_type == pa.string():
        return [v.encode("utf-8", "replace").decode() if isinstance(v, str) else v for v in values]
    return values


@FUZZ
@given(columns=parquet_table(["question", "context"]), n_valid=st.integers(0, 3))
def test_flat_parquet_never_raises(columns, n_valid):
    columns = {k: (t, safe_values(v, t)) for k, (t, v) in columns.items()}
    n = len(columns["question"][1])
    valid = valid_pairs(n_valid)
    question_ok = columns["question"][0] == pa.string() and columns.get("context", (pa.string(),))[0] == pa.string()
    if question_ok:  # valid rows appended after the fuzzed ones
        columns["question"] = (pa.string(), columns["question"][1] + [q for q, _ in valid])
        context = columns.get("context", (pa.string(), [None] * n))[1]
        columns["context"] = (pa.string(), context + [a for _, a in valid])
        columns = {k: (t, v + [None] * (len(v) < n + n_valid) * n_valid) for k, (t, v) in columns.items()}
    counts, rows = run_ingest("cmrc2018", {"data/train-0.parquet": write_parquet(columns)})
    assert counts.read == n + (n_valid if question_ok else 0)
    if question_ok:
        assert set(valid) <= pairs(rows)


@FUZZ
@given(columns=parquet_table(["label", "sentence1", "sentence2"]), raw=st.one_of(st.none(), st.binary(max_size=30)),
       data=st.data())
def test_label_filtered_parquet_never_raises(columns, raw, data):
    columns = {k: (t, safe_values(v, t)) for k, (t, v) in columns.items()}
    payload = write_parquet(columns)
    if raw is not None:  # not a Parquet file at all, or a truncated one
        payload = data.draw(st.sampled_from([raw, b"", payload[: len(payload) // 2], b"PAR1" + raw]))
    counts, _ = run_ingest("ocnli", {"train.parquet": payload})
    if raw is not None:
        assert counts.kept == 0


# --- SQuAD JSON (Chinese-SQuAD: question -> context) ------------------------------------------------------------

qa = st.one_of(junk, record(["question", "is_impossible", "id", "answers"]), deep)
paragraph = st.one_of(junk, st.fixed_dictionaries({}, optional={
    "context": field_value(), "qas": st.one_of(junk, st.lists(qa, max_size=3))}))
article = st.one_of(junk, st.fixed_dictionaries({}, optional={
    "title": junk, "paragraphs": st.one_of(junk, st.lists(paragraph, max_size=3))}))


@FUZZ
@given(articles=st.lists(article, max_size=4), n_valid=st.integers(0, 3), seed=st.integers(0, 1000),
       ensure_ascii=st.booleans(), data=st.data())
def test_squad_never_raises(articles, n_valid, seed, ensure_ascii, data):
    valid = valid_pairs(n_valid)
    good = {"title": "t", "paragraphs": [
        {"context": a, "qas": [{"question": q, "answers": [{"text": a[:2], "answer_start": 0}], "is_impossible": False}]}
        for q, a in valid]}
    raw = to_json_bytes({"version": 1, "data": interleave(articles, [good] if valid else [], seed)}, ensure_ascii)
    if data.draw(st.booleans(), label="damage"):
        run_ingest("Chinese-SQuAD", {"squad-zen/train.json": data.draw(damaged(raw), label="damaged")})
    else:
        _, rows = run_ingest("Chinese-SQuAD", {"squad-zen/train.json": raw})
        assert set(valid) <= pairs(rows)


# --- TableQA (Zhuiyi-NL2SQL: question -> SQL rendered from the tables file) -------------------------------------

TABLE = {"id": "t1", "name": "表一", "header": ["城市", "人口"], "types": ["text", "real"]}
GOOD_SQL = {"sel": [0], "agg": [0], "conds": [[1, 0, "100"]], "cond_conn_op": 0}
sql = st.one_of(
    junk, st.just(GOOD_SQL),
    st.fixed_dictionaries({}, optional={"sel": junk, "agg": junk, "conds": junk, "cond_conn_op": junk}),
    st.fixed_dictionaries({"sel": st.lists(junk, max_size=2), "agg": st.lists(junk, max_size=2),
                           "conds": st.lists(st.lists(junk, min_size=3, max_size=3), max_size=2),
                           "cond_conn_op": junk}),
)
question_record = st.fixed_dictionaries({}, optional={
    "table_id": st.one_of(st.sampled_from(["t1", "t1", "nope"]), junk), "sql": sql, "question": field_value()})
table_line = st.one_of(st.just(to_json_bytes(TABLE, False)), jsonl_line(["id", "name", "header", "types"]),
                       st.fixed_dictionaries({"id": st.just("t1"), "header": junk}, optional={
                           "types": junk, "name": junk}).map(lambda t: to_json_bytes(t, False)))


@FUZZ
@given(lines=st.lists(st.one_of(question_record.map(lambda r: to_json_bytes(r, False)), jsonl_line(
    ["table_id", "sql", "question"])), max_size=8), tables=st.lists(table_line, max_size=4),
    n_valid=st.integers(0, 3), seed=st.integers(0, 1000), with_tables=st.booleans())
def test_tableqa_never_raises(lines, tables, n_valid, seed, with_tables):
    questions = [f"有效问题{i}" for i in range(n_valid)]
    valid_lines = [to_json_bytes({"table_id": "t1", "question": q, "sql": GOOD_SQL}, False) for q in questions]
    files = {"val/val.json": b"\n".join(interleave(lines, valid_lines, seed))}
    if with_tables:  # the good table first: a later line with the same id may override it
        files["val/val.tables.json"] = b"\n".join([to_json_bytes(TABLE, False), *tables])
    _, rows = run_ingest("Zhuiyi-NL2SQL", files, split="validation")
    if with_tables and not tables:
        kept = {r["text"]: r["text_pos"] for r in rows}
        for q in questions:
            assert kept[q] == 'SELECT 城市 FROM 表一 WHERE 人口 > 100'


# --- empty files, every format ---------------------------------------------------------------------------------

def test_empty_files_of_every_format():
    for name, relpath in [("firefily", "f.jsonl"), ("alpaca_gpt4", "a.json"), ("lawzhidao", "l.csv"),
                          ("cmrc2018", "data/train-0.parquet"), ("Chinese-SQuAD", "squad-zen/train.json"),
                          ("Zhuiyi-NL2SQL", "val/val.json")]:
        counts, rows = run_ingest(name, {relpath: b""})
        assert not rows
        assert counts.read in (0, 1), (name, counts)
