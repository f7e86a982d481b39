"""The build's counts as Prefect artifacts, on the flow run's Artifacts tab and under their keys
(`prefect artifact ls`, `prefect artifact inspect m3e-hq-samples-0c1d2e3f-filter`).

Per stage, a table of rows read, kept and dropped (in all and by reason) per source; and a Markdown summary: the
totals per stage and how each source fared. Keys name the build folder and a hash of its absolute path, so that each
folder keeps its own history (`/a/samples` and `/b/samples` too): `m3e-hq-<folder>-<hash>-<stage>` and
`m3e-hq-<folder>-<hash>-summary`.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from m3e_hq.flows.core.accounting import StageCounts
from m3e_hq.flows.core.manifest import stage_totals


def slug(text: str) -> str:
    """A piece of an artifact key: lowercase letters, digits and single dashes ("Chinese_SQuAD" -> "chinese-squad")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def artifact_key(build_dir: str, name: str) -> str:
    """The key of the build folder's artifact `name`: the folder's name and the first 8 hex digits of the SHA-256 of
    its absolute path, so that two folders of the same name keep apart histories."""
    folder = Path(build_dir).absolute()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return "-".join(filter(None, ["m3e-hq", slug(folder.name), digest, slug(name)]))


def stage_rows(counts: list[StageCounts]) -> list[dict[str, Any]]:
    """One row per source: read, kept, dropped, then one column per reason the stage dropped rows for."""
    reasons = sorted({reason for c in counts for reason in c.dropped})
    return [{"source": c.source, "read": c.read, "kept": c.kept, "dropped": c.dropped_total,
             **{reason: c.dropped.get(reason, 0) for reason in reasons}} for c in counts]


def cell(value: Any) -> str:
    """A value as a Markdown table cell (pipes escaped, on one line)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def published_lines(summary: dict[str, Any]) -> list[str]:
    """Where the datasets were published and uploaded, or why not (nothing to publish, a failed upload), and the
    build's problem line when sources failed or are suspect."""
    published = summary["published"]
    lines = [f"- not published: {cell(published['skipped'])}"] if "skipped" in published else []
    lines += [f"- {name}: `{folder}`" for name, folder in published["folders"].items()]
    lines += [f"- uploaded {repo}: {url}" for repo, url in published.get("hub", {}).items()]
    if "push_failed" in published:
        lines.append(f"- **upload failed**: {cell(published['push_failed'])}")
    if summary.get("problem"):
        lines.append(f"- **problem**: {cell(summary['problem'])}")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """The build in a few lines: where it is, the totals per stage, each source's status and rows kept, and what was
    published (or why not)."""
    stages: dict[str, list[StageCounts]] = summary["stages"]
    totals = {stage: stage_totals(counts) for stage, counts in stages.items()}
    kept = {stage: {c.source: c.kept for c in counts} for stage, counts in stages.items()}
    lines = [f"# m3e-hq build: `{summary['build_dir']}`", "", f"Manifest: `{summary['manifest']}`", "", "## Stages", ""]
    lines += markdown_table(["stage", "read", "kept", "dropped"], [
        [stage, t["read"], t["kept"], sum(t["dropped"].values())] for stage, t in totals.items()])
    lines += ["", "## Sources", ""]
    lines += markdown_table(["source", "status", *(f"kept after {stage}" for stage in stages), "note"], [
        [r.source, r.status, *(kept[stage].get(r.source, "-") for stage in stages), r.message or ""]
        for r in summary["results"]])
    lines += ["", "## Published", "", *published_lines(summary)]
    return "\n".join(lines) + "\n"


def publish_artifacts(summary: dict[str, Any]) -> None:
    """Publish a table per stage and the Markdown summary of a build (inside a flow run: linked to it)."""
    build_dir = summary["build_dir"]
    for stage, counts in summary["stages"].items():
        create_table_artifact(stage_rows(counts), key=artifact_key(build_dir, stage),
                              description=f"{stage}: rows read, kept and dropped by reason per source ({build_dir})")
    create_markdown_artifact(summary_markdown(summary), key=artifact_key(build_dir, "summary"),
                             description=f"m3e-hq build summary ({build_dir})")
