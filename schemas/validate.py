"""The one validation function for m3e-hq tables: every stage checks what it writes with it."""

import pyarrow as pa
import pyarrow.compute as pc

from m3e_hq.schemas.enums import Domain, Permission, Prompt, Quality, TaskType
from m3e_hq.schemas.records import ID_HEX_CHARS, M3E_HQ_WITH_SCORE_SCHEMA

ENUM_COLUMNS: dict[str, type] = {
    "domain": Domain,
    "task_type": TaskType,
    "prompt": Prompt,
    "quality": Quality,
    "commercial": Permission,
    "research_use": Permission,
}


class SchemaError(ValueError):
    """A table does not follow its schema; the message lists every problem found."""


def validate_table(table: pa.Table, schema: pa.Schema) -> None:
    """Raise SchemaError unless `table` has exactly `schema`'s columns and types and valid values."""
    problems: list[str] = []
    names = set(table.column_names)
    missing = [f.name for f in schema if f.name not in names]
    extra = sorted(names - set(schema.names))
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    for field in schema:
        if field.name not in names:
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            problems.append(f"column {field.name!r} has type {column.type}, expected {field.type}")
            continue
        if not field.nullable and column.null_count:
            problems.append(f"column {field.name!r} has {column.null_count} nulls")
    if not problems:
        problems += _value_problems(table, schema)
    if problems:
        raise SchemaError(f"{schema.metadata.get(b'name', b'table').decode()}: " + "; ".join(problems))


def _value_problems(table: pa.Table, schema: pa.Schema) -> list[str]:
    problems = []
    for name, enum in ENUM_COLUMNS.items():
        if name in schema.names:
            bad = set(pc.unique(table.column(name)).to_pylist()) - {m.value for m in enum}
            if bad:
                problems.append(f"column {name!r} has values {sorted(bad)} outside {enum.__name__}")
    if "id" in schema.names and table.num_rows:
        ids = table.column("id")
        if not pc.all(pc.match_substring_regex(ids, f"^[0-9a-f]{{{ID_HEX_CHARS}}}$")).as_py():
            problems.append(f"column 'id' has values that are not {ID_HEX_CHARS} lowercase hex characters")
        if pc.count_distinct(ids).as_py() != table.num_rows:
            problems.append("column 'id' has duplicate ids")
    for name in ("text", "text_pos"):
        if name in schema.names and table.num_rows:
            empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column(name))), 0)).as_py()
            if empty:
                problems.append(f"column {name!r} has {empty} empty texts")
    if schema.equals(M3E_HQ_WITH_SCORE_SCHEMA, check_metadata=False) and table.num_rows:
        same = pc.equal(pc.list_value_length(table.column("text_neg")), pc.list_value_length(table.column("score_neg")))
        if not pc.all(same).as_py():
            problems.append("text_neg and score_neg differ in length on some rows")
    return problems
