"""m3e-hq builder: the M3E Chinese text-pair sources, cleaned, licence-tagged and scored.

Layers, each importing only those before it:

    m3e_hq (files, progress) ← schemas ← sources ← flows.core ← flows.stages ← flows.pipeline ← flows.cli

In the repository they are the folders `m3e_hq/`, `schemas/`, `sources/`, `flows/core/`, `flows/stages/`,
`flows/pipeline/` and `flows/cli.py`; installed, the one package `m3e_hq` (`m3e_hq.schemas`, `m3e_hq.sources`,
`m3e_hq.flows`), with the catalog and the shipped samples (`m3e_hq.samples`) as package data.
"""

__version__ = "0.1.0"
