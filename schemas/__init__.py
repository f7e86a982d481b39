"""What an m3e-hq record is: Arrow schemas, enumerations and the one validation function."""

from m3e_hq.schemas.enums import Domain, Permission, Prompt, Quality, TaskType
from m3e_hq.schemas.records import DROPPED_SCHEMA, M3E_HQ_SCHEMA, M3E_HQ_WITH_SCORE_SCHEMA, row_id
from m3e_hq.schemas.validate import SchemaError, validate_table

__all__ = [
    "DROPPED_SCHEMA",
    "M3E_HQ_SCHEMA",
    "M3E_HQ_WITH_SCORE_SCHEMA",
    "Domain",
    "Permission",
    "Prompt",
    "Quality",
    "SchemaError",
    "TaskType",
    "row_id",
    "validate_table",
]
