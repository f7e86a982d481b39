"""Enumerations of an m3e-hq row: stable English codes stored in the data, the M3E table's Chinese labels for display."""

from enum import StrEnum
from typing import Self


class TextEnum(StrEnum):
    """A string enum whose members are a stable code and a text about it: `Member = "code", "text"`."""

    text: str

    def __new__(cls, code: str, text: str) -> Self:
        member = str.__new__(cls, code)
        member._value_ = code
        member.text = text
        return member


class LabelledEnum(TextEnum):
    """A string enum whose members carry the Chinese label used in the M3E dataset table."""

    @property
    def label_zh(self) -> str:
        return self.text

    @classmethod
    def from_label(cls, label_zh: str) -> Self:
        """The member whose Chinese label is `label_zh` (as written in the M3E table)."""
        for member in cls:
            if member.label_zh == label_zh:
                return member
        raise ValueError(f"{label_zh!r} is not a {cls.__name__} label; known: {[m.label_zh for m in cls]}")


class Domain(LabelledEnum):
    ENCYCLOPEDIA = "encyclopedia", "百科"
    ECOMMERCE = "ecommerce", "电商"
    NEWS = "news", "新闻"
    COLLOQUIAL = "colloquial", "口语"
    FINANCE = "finance", "金融"
    MEDICAL = "medical", "医药"
    ACADEMIC = "academic", "学术"
    LEGAL = "legal", "法律"
    IDIOM = "idiom", "成语"
    SQL = "sql", "SQL"


class TaskType(LabelledEnum):
    QA = "qa", "问答"
    INSTRUCTION = "instruction", "指令微调"
    CLASSIFICATION = "classification", "文本分类"
    SUMMARIZATION = "summarization", "摘要"
    NLI = "nli", "自然语言推理"
    PARAPHRASE = "paraphrase", "平行语义"
    MRC = "mrc", "机器阅读理解"
    CORPUS = "corpus", "语料"
    NL2SQL = "nl2sql", "NL2SQL"


class Prompt(LabelledEnum):
    QA = "qa", "问答"
    SUMMARY = "summary", "摘要"
    SIMILARITY = "similarity", "相似"
    INFERENCE = "inference", "推理"
    SQL = "sql", "SQL"
    NONE = "none", "无"


class Quality(LabelledEnum):
    EXCELLENT = "excellent", "优"
    GOOD = "good", "良"


class Permission(LabelledEnum):
    """Answer to the table's 是否开源/研究使用 and 是否商用 columns."""

    YES = "yes", "是"
    NO = "no", "否"
    UNKNOWN = "unknown", "未说明"


class ObtainStatus(StrEnum):
    """How a source's native files were had (sources/fetch.py), or, without fetching, where it stands."""

    CACHED = "cached"
    DOWNLOADED = "downloaded"
    PRESENT = "present"
    PARTIAL = "partial"
    SKIPPED = "skipped"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"
    NOT_DOWNLOADED = "not downloaded"

    @property
    def ok(self) -> bool:
        """Whether the source has files to read."""
        return self in (ObtainStatus.CACHED, ObtainStatus.DOWNLOADED, ObtainStatus.PRESENT, ObtainStatus.PARTIAL)


class SourceStatus(StrEnum):
    """How a source fared in a build."""

    OK = "ok"
    SUSPECT = "suspect"  # ingested, but no row kept or most rows quarantined for a structural reason
    MISSING = "missing"  # its folder lacks the files
    SKIPPED = "skipped"  # a manual source not there
    UNAVAILABLE = "unavailable"  # a manual source that cannot be downloaded any more, not there
    FAILED = "failed"  # download or ingest error


class CacheState(StrEnum):
    """A cache record's last download attempt."""

    CACHED = "cached"  # complete
    FAILED = "failed"  # with the reason
