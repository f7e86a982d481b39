"""Faults confined to the record they are in: one bad byte in a JSON document, an unterminated quote in a CSV file,
UTF-16 files with a byte-order mark. Real Chinese text (SimCLUE pairs, the shipped samples), planted faults; every
row read is kept or quarantined with a reason."""

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq

from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.flows.stages.ingest import ingest_source
from m3e_hq.sources.catalog import default_catalog
from m3e_hq.sources.layout import SAMPLES_DIR
from m3e_hq.sources.readers import SourceFile

CATALOG = default_catalog()
REAL_PAIRS = [json.loads(line) for line in
              Path("/work/shared/data/real/simclue/train_pair_postive_1w.json").read_text(encoding="utf-8").splitlines()]


def ingest(tmp: Path, name: str, relpath: str, data: bytes) -> tuple[StageCounts, list[dict], list[dict]]:
    """Ingest one native file of source `name`: its counts (the identity checked), kept and dropped rows."""
    path = tmp / "native" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    counts = ingest_source(CATALOG.get(name), [SourceFile(path, relpath, "train")], tmp / "out")
    counts.check()
    assert counts.read == counts.kept + sum(counts.dropped.values())
    dropped = pq.read_table(counts.dropped_path).to_pylist()
    assert all(d["reason"] and d["raw"] for d in dropped)
    return counts, pq.read_table(counts.kept_path).to_pylist(), dropped


def pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["text"], r["text_pos"]) for r in rows]


def with_bad_byte(data: bytes, inside: str, encoding: str = "utf-8") -> bytes:
    """`data` with the second byte of the first character of `inside` replaced by 0xff (a broken character)."""
    at = data.index(inside.encode(encoding)) + 1
    return data[:at] + b"\xff" + data[at + 1:]


# --- JSON documents: one bad byte quarantines the record it is in, not the document -------------------------------


def test_one_bad_byte_in_a_json_document_quarantines_only_its_record(tmp_path):
    records = [{"instruction": p["query"], "input": "", "output": p["title"]} for p in REAL_PAIRS[:20]]
    data = with_bad_byte(json.dumps(records, ensure_ascii=False, indent=1).encode(), REAL_PAIRS[7]["query"])

    counts, kept, dropped = ingest(tmp_path, "alpaca_gpt4", "alpaca_gpt4_data_zh.json", data)

    assert counts.read == 20 and counts.kept == 19 and counts.dropped == {"invalid_utf8": 1}  # was 1 read, 0 kept
    assert pairs(kept) == [(p["query"], p["title"]) for i, p in enumerate(REAL_PAIRS[:20]) if i != 7]
    [row] = dropped
    assert row["locator"] == "alpaca_gpt4_data_zh.json:7" and "\\udcff" in row["raw"]


def test_one_bad_byte_in_a_gbk_json_document_quarantines_only_its_record(tmp_path):
    sample = (SAMPLES_DIR / "CINLID" / "train.json").read_bytes()
    before, kept_before, _ = ingest(tmp_path / "a", "CINLID", "train.json", sample)

    counts, kept, dropped = ingest(tmp_path / "b", "CINLID", "train.json", with_bad_byte(sample, "胸有成竹", "gbk"))

    assert counts.read == before.read and counts.kept == before.kept - 1
    assert counts.dropped == {**before.dropped, "invalid_utf8": before.dropped.get("invalid_utf8", 0) + 1}
    assert pairs(kept) == [p for p in pairs(kept_before) if p[0] != "胸有成竹"]
    assert "train.json:1" in [d["locator"] for d in dropped if d["reason"] == "invalid_utf8"]


def test_a_json_document_that_is_neither_utf8_nor_json_is_still_one_invalid_utf8(tmp_path):
    counts, kept, dropped = ingest(tmp_path, "alpaca_gpt4", "a.json", "成语".encode("gbk"))
    assert kept == [] and counts.dropped == {"invalid_utf8": 1}
    assert dropped[0]["raw"].startswith("not utf-8: 'utf-8' codec can't decode byte")


# --- CSV: an unterminated quote quarantines its line; the rows after it are read ----------------------------------


def lawzhidao_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["title", "question", "reply", "is_best"], *rows])
    return buffer.getvalue()


def real_rows(n: int) -> list[list[str]]:
    return [[p["query"], "", p["title"], "1"] for p in REAL_PAIRS[:n]]


def test_an_unterminated_quote_in_a_csv_quarantines_its_line_and_the_rest_is_read(tmp_path):
    rows = real_rows(50)
    lines = lawzhidao_csv(rows).splitlines(keepends=True)
    lines[2] = lines[2].replace(",,", ',,"', 1)  # row 2's reply opens a quote that is never closed
    counts, kept, dropped = ingest(tmp_path, "lawzhidao", "lawzhidao_filter.csv", "".join(lines).encode())

    assert counts.read == 50 and counts.kept == 49 and counts.dropped == {"invalid_csv": 1}  # was 2 read, 2 kept
    assert pairs(kept) == [(r[0], r[2]) for i, r in enumerate(rows) if i != 1]
    assert [(d["locator"], d["raw"]) for d in dropped] == [("lawzhidao_filter.csv:3", lines[2].rstrip("\n"))]
    _, clean, _ = ingest(tmp_path / "clean", "lawzhidao", "lawzhidao_filter.csv", lawzhidao_csv(rows).encode())
    assert kept == [row for i, row in enumerate(clean) if i != 1]  # the same rows, ids and all


def test_csv_quoted_cells_over_several_lines_are_kept_and_each_open_quote_is_confined(tmp_path):
    rows = real_rows(12)
    rows[3][2] = f"{rows[3][2]}\n第二行，\"引号\"\n第三行"  # a legitimate quoted cell over three lines
    lines = lawzhidao_csv(rows).splitlines(keepends=True)
    assert len(lines) == 15
    lines[7] = lines[7].replace(",,", ',,"', 1)  # row 4 (line 8): its quote closes at the next one, on line 12
    lines[11] = lines[11].replace(",,", ',,"', 1)  # row 8 (line 12): its quote is never closed

    counts, kept, dropped = ingest(tmp_path, "lawzhidao", "lawzhidao_filter.csv", "".join(lines).encode("utf-8-sig"))

    assert counts.read == 12 and counts.dropped == {"invalid_csv": 2}
    assert pairs(kept) == [(r[0], r[2]) for i, r in enumerate(rows) if i not in (4, 8)]  # was 8 read, 4 swallowed
    assert [d["locator"] for d in dropped] == ["lawzhidao_filter.csv:8", "lawzhidao_filter.csv:12"]


# --- UTF-16 with a byte-order mark: read as UTF-16, rows as in UTF-8 ----------------------------------------------


def test_utf16_files_with_a_byte_order_mark_read_like_their_utf8_copies(tmp_path):
    samples = [("lawzhidao", "lawzhidao_filter.csv", (SAMPLES_DIR / "lawzhidao" / "lawzhidao_filter.csv").read_text(
        encoding="utf-8")),
               ("SimCLUE", "train_pair_postive.json", "".join(json.dumps(p, ensure_ascii=False) + "\n"
                                                             for p in REAL_PAIRS[:30])),
               ("alpaca_gpt4", "alpaca_gpt4_data_zh.json", json.dumps(
                   [{"instruction": p["query"], "input": "", "output": p["title"]} for p in REAL_PAIRS[:30]],
                   ensure_ascii=False))]
    for name, relpath, text in samples:
        utf8, kept8, dropped8 = ingest(tmp_path / name / "utf-8", name, relpath, text.encode("utf-8"))
        assert utf8.kept >= 10, name
        for codec in ("utf-16", "utf-16-be"):
            data = text.encode(codec) if codec == "utf-16" else b"\xfe\xff" + text.encode(codec)
            counts, kept, dropped = ingest(tmp_path / name / codec, name, relpath, data)
            assert (counts.read, counts.kept, counts.dropped) == (utf8.read, utf8.kept, utf8.dropped), (name, codec)
            assert kept == kept8 and [d["reason"] for d in dropped] == [d["reason"] for d in dropped8]


def test_a_bad_code_unit_in_a_utf16_file_quarantines_only_its_record(tmp_path):
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in REAL_PAIRS[:10])
    data = bytearray(text.encode("utf-16-le"))
    at = text.index(REAL_PAIRS[4]["title"]) * 2
    data[at:at + 2] = b"\x00\xd8"  # a lone high surrogate
    counts, kept, dropped = ingest(tmp_path, "SimCLUE", "train_pair_postive.json", b"\xff\xfe" + bytes(data))

    assert pairs(kept) == [(p["query"], p["title"]) for i, p in enumerate(REAL_PAIRS[:10]) if i != 4]
    assert counts.read == 10 and counts.kept == 9 and counts.dropped == {"invalid_utf8": 1}
    assert [d["locator"] for d in dropped] == ["train_pair_postive.json:5"]


def test_a_junk_first_line_that_starts_like_a_utf16_mark_does_not_make_the_file_utf16(tmp_path):
    lines = [json.dumps(p, ensure_ascii=False).encode() for p in REAL_PAIRS[:10]]
    for junk in (b"\xff\xfe", b"\xfe\xff\xfd", b"\xff\xfe\xe4\xb8"):
        counts, kept, _ = ingest(tmp_path / junk.hex(), "SimCLUE", "t.json", b"\n".join([junk, *lines]) + b"\n")
        assert counts.read == 11 and counts.dropped == {"invalid_utf8": 1}, junk
        assert pairs(kept) == [(p["query"], p["title"]) for p in REAL_PAIRS[:10]]
