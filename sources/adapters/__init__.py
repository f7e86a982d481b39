"""Adapters: one per native format, each turning a source's native files into candidate (text, text_pos) pairs."""

from collections.abc import Iterator

from m3e_hq.sources.adapters.base import Candidate
from m3e_hq.sources.adapters.flat import adapt_flat
from m3e_hq.sources.adapters.squad import adapt_squad
from m3e_hq.sources.adapters.tableqa import adapt_tableqa
from m3e_hq.sources.catalog import Source
from m3e_hq.sources.readers import SourceFile

ADAPTERS = {"flat": adapt_flat, "squad": adapt_squad, "tableqa": adapt_tableqa}


def candidates(source: Source, files: list[SourceFile]) -> Iterator[Candidate]:
    """The candidate pairs of a source's native files, through the adapter its catalog entry names."""
    return ADAPTERS[source.adapter.name](files, source.adapter)


__all__ = ["ADAPTERS", "Candidate", "candidates"]
