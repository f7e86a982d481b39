"""What an m3e-hq record is: Arrow schemas, enumerations, the one validation function, and the build manifest."""

from m3e_hq.schemas.enums import (
    CacheState,
    Domain,
    ObtainStatus,
    Permission,
    Prompt,
    Quality,
    SourceStatus,
    TaskType,
)
from m3e_hq.schemas.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ObtainedSummary,
    SourceCounts,
    SourceSummary,
    StageSummary,
    StageTotals,
)
from m3e_hq.schemas.records import DROPPED_SCHEMA, M3E_HQ_SCHEMA, M3E_HQ_WITH_SCORE_SCHEMA, row_id
from m3e_hq.schemas.validate import SchemaError, validate_table

__all__ = [
    "DROPPED_SCHEMA",
    "M3E_HQ_SCHEMA",
    "M3E_HQ_WITH_SCORE_SCHEMA",
    "MANIFEST_NAME",
    "CacheState",
    "Domain",
    "Manifest",
    "ManifestError",
    "ObtainStatus",
    "ObtainedSummary",
    "Permission",
    "Prompt",
    "Quality",
    "SchemaError",
    "SourceCounts",
    "SourceStatus",
    "SourceSummary",
    "StageSummary",
    "StageTotals",
    "TaskType",
    "row_id",
    "validate_table",
]
