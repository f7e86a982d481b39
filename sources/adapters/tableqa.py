"""Adapter for Zhuiyi TableQA (NL2SQL): questions with a structured `sql`, rendered as SQL text with the tables file.

Question file (JSON Lines): {"table_id", "question", "sql": {"sel": [col], "agg": [code], "cond_conn_op": code,
"conds": [[col, op, value]]}}. Tables file `<name>.tables.json` (JSON Lines): {"id", "name", "header", "types"}.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m3e_hq.sources.adapters.base import Candidate, rejected
from m3e_hq.sources.catalog import TableQAAdapter
from m3e_hq.sources.readers import SourceFile, read_records

AGGREGATES = {0: "", 1: "AVG", 2: "MAX", 3: "MIN", 4: "COUNT", 5: "SUM"}
OPERATORS = {0: ">", 1: "<", 2: "=", 3: "!="}
CONNECTORS = {0: "AND", 1: "AND", 2: "OR"}  # 0 is "no connector": one condition, or an AND the data left unset


class BadSQL(ValueError):
    """The structured sql cannot be rendered against its table."""


def tables_path(questions: Path) -> Path:
    return questions.with_name(questions.name.removesuffix(".json") + ".tables.json")


def adapt_tableqa(files: list[SourceFile], spec: TableQAAdapter) -> Iterator[Candidate]:
    """One candidate per question: text = question, text_pos = the SQL rendered from `sql` and the table header."""
    for file in files:
        tables = load_tables(tables_path(file.path))
        for native in read_records(file, "jsonl"):
            record = native.record
            if native.reason:
                yield rejected(native, file.split)
            elif not isinstance(record, dict):
                yield rejected(native, file.split, "invalid_record")
            elif record.get("table_id") is None or record.get("sql") is None:
                yield rejected(native, file.split, "missing_field")
            elif not isinstance(record["table_id"], str):
                yield rejected(native, file.split, "wrong_type")
            elif record["table_id"] not in tables:
                yield rejected(native, file.split, "missing_table")
            else:
                try:
                    sql = render_sql(record["sql"], tables[record["table_id"]])
                except BadSQL:
                    yield rejected(native, file.split, "bad_sql")
                    continue
                yield Candidate(file.split, native.locator, record.get("question"), sql, raw=record)


def load_tables(path: Path) -> dict[str, dict]:
    """Tables by id; an absent file gives no tables (its questions are then rejected as missing_table)."""
    if not path.exists():
        return {}
    file = SourceFile(path, path.name, "")
    return {
        n.record["id"]: n.record
        for n in read_records(file, "jsonl")
        if isinstance(n.record, dict) and isinstance(n.record.get("id"), str) and isinstance(n.record.get("header"), list)
    }


def render_sql(sql: Any, table: dict) -> str:
    """SELECT <agg(col), ...> FROM <table> [WHERE <col op value> AND|OR ...]."""
    if not isinstance(sql, dict):
        raise BadSQL("sql is not an object")
    header, types = table["header"], table.get("types")
    types = types if isinstance(types, list) else []
    sel, agg = sql.get("sel"), sql.get("agg")
    if not isinstance(sel, list) or not isinstance(agg, list) or not sel or len(sel) != len(agg):
        raise BadSQL(f"sel {sel!r} and agg {agg!r} must be lists of the same non-zero length")
    columns = []
    for col, code in zip(sel, agg):
        name = _column(header, col)
        if not _known(code, AGGREGATES):
            raise BadSQL(f"unknown aggregate {code!r}")
        columns.append(f"{AGGREGATES[code]}({name})" if AGGREGATES[code] else name)
    query = f"SELECT {', '.join(columns)} FROM {table.get('name') or table['id']}"
    conds = sql.get("conds") or []
    if not isinstance(conds, list):
        raise BadSQL("conds is not a list")
    rendered = []
    for cond in conds:
        if not isinstance(cond, list) or len(cond) != 3 or not _known(cond[1], OPERATORS):
            raise BadSQL(f"bad condition {cond!r}")
        col, op, value = cond
        name = _column(header, col)
        numeric = col < len(types) and types[col] == "real" and _is_number(value)
        rendered.append(f"{name} {OPERATORS[op]} {value if numeric else _quote(value)}")
    if rendered:
        connector = sql.get("cond_conn_op", 0)
        if not _known(connector, CONNECTORS):
            raise BadSQL(f"unknown condition connector {connector!r}")
        query += " WHERE " + f" {CONNECTORS[connector]} ".join(rendered)
    return query


def _known(code: Any, codes: dict) -> bool:
    """Whether `code` is one of the codes (a list or object, unhashable, is not)."""
    return isinstance(code, int | float | str) and code in codes


def _column(header: list, col: Any) -> str:
    if not isinstance(col, int) or isinstance(col, bool) or not 0 <= col < len(header):
        raise BadSQL(f"column index {col!r} outside the table's {len(header)} columns")
    return str(header[col])


def _is_number(value: Any) -> bool:
    """Whether a condition value reads as a number; an integer too large for a float is no value of a real column."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    except OverflowError:
        raise BadSQL(f"condition value {str(value)[:20]}… ({len(str(value))} digits) is too large for a real") from None
    return True


def _quote(value: Any) -> str:
    return '"' + str(value).replace('"', '\\"') + '"'
