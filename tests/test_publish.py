"""Publishing (flows.stages.publish) the samples build: every config of both folders loads offline with the build's rows,
the trainer configs train a tiny model for a step, the commercial-only export holds only commercial sources, a
failed publish leaves the previous one intact, and the cards parse and the checksums match."""

import hashlib
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from m3e_hq.flows.stages import publish as publish_module
from m3e_hq.flows.stages.publish import (
    COMMERCIAL,
    DEFAULT,
    M3E_HQ,
    SCORED_PAIRS,
    SUMS_NAME,
    TRIPLETS,
    WITH_SCORE,
    PublishParams,
    PublishResult,
    flagembedding_lines,
    publish,
)
from m3e_hq.schemas import ManifestError
from m3e_hq.sources.catalog import Catalog

SHARD_ROWS = 500
STAGE = {M3E_HQ: "dedup", WITH_SCORE: "mine"}
FLAG_KEYS = {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "type"}
UNIEM_KEYS = {"sentence1", "sentence2", "label"}


@pytest.fixture(scope="module")
def build_dir(samples_build: dict) -> Path:
    return Path(samples_build["build_dir"])


@pytest.fixture(scope="module")
def rows(build_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """The build's rows per dataset and source."""
    return {dataset: {p.stem: pq.read_table(p).to_pylist() for p in sorted((build_dir / stage).glob("*.parquet"))}
            for dataset, stage in STAGE.items()}


@pytest.fixture(scope="module")
def published(build_dir: Path, catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    return publish(build_dir, tmp_path_factory.mktemp("published"), PublishParams(shard_rows=SHARD_ROWS), catalog)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def load(folder: Path, config: str, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset(str(folder), config, split="train", cache_dir=str(cache))


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def config_table(folder: Path, config: str) -> pa.Table:
    """A config's rows read straight from the files its card's data_files globs name."""
    entry = next(c for c in front_matter(folder)["configs"] if c["config_name"] == config)
    (files,) = entry["data_files"]
    globs = [files["path"]] if isinstance(files["path"], str) else files["path"]
    return pa.concat_tables(pq.read_table(p) for g in globs for p in sorted(folder.glob(g)))


def triples(source_rows: list[dict]) -> Counter:
    return Counter((r["text"], r["text_pos"], neg) for r in source_rows for neg in r["text_neg"])


def pairs(source_rows: list[dict]) -> Counter:
    return (Counter((r["text"], r["text_pos"]) for r in source_rows)
            + Counter((r["text"], neg) for r in source_rows for neg in r["text_neg"]))


def expected_configs(dataset: str, by_source: dict[str, list[dict]], catalog: Catalog,
                     include_unknown: bool) -> dict[str, int]:
    """Rows per config the build's files call for."""
    counts = {DEFAULT: sum(map(len, by_source.values())),
              COMMERCIAL: sum(len(r) for s, r in by_source.items()
                              if catalog.get(s).commercial_use(include_unknown))}
    if dataset == WITH_SCORE:
        counts[TRIPLETS] = sum(len(r["text_neg"]) for rs in by_source.values() for r in rs)
        counts[SCORED_PAIRS] = counts[DEFAULT] + counts[TRIPLETS]
    return counts | {s: len(r) for s, r in by_source.items() if r}


def test_every_config_loads_offline_with_the_builds_rows(published, rows, catalog, offline, tmp_path):
    for dataset, folder in ((M3E_HQ, published.m3e_hq.folder), (WITH_SCORE, published.with_score.folder)):
        by_source = rows[dataset]
        expected = expected_configs(dataset, by_source, catalog, include_unknown=False)
        assert set(datasets.get_dataset_config_names(str(folder))) == set(expected)
        for config, n in expected.items():
            ds = load(folder, config, tmp_path)
            assert ds.num_rows == n, (dataset, config)
            if config in by_source:
                assert set(ds["source"]) == {config}
                assert sorted(ds["id"]) == sorted(r["id"] for r in by_source[config])
            elif config in (DEFAULT, COMMERCIAL):
                assert sorted(ds["id"]) == sorted(r["id"] for s, rs in by_source.items() for r in rs
                                                  if config == DEFAULT or catalog.get(s).commercial_use())
        if dataset == WITH_SCORE:
            every = [r for rs in by_source.values() for r in rs]
            trip = load(folder, TRIPLETS, tmp_path)
            assert trip.column_names == ["anchor", "positive", "negative", "score_pos", "score_neg"]
            assert Counter(zip(trip["anchor"], trip["positive"], trip["negative"], strict=True)) == triples(every)
            scored = load(folder, SCORED_PAIRS, tmp_path)
            assert scored.column_names == ["sentence1", "sentence2", "score"]
            assert Counter(zip(scored["sentence1"], scored["sentence2"], strict=True)) == pairs(every)
            assert published.score_scale == "cosine[-1,1]"
            assert all(-1 <= s <= 1 for s in scored["score"])
    assert published.m3e_hq.rows == expected_configs(M3E_HQ, rows[M3E_HQ], catalog, include_unknown=False)
    assert published.with_score.rows == expected_configs(WITH_SCORE, rows[WITH_SCORE], catalog, include_unknown=False)


def test_trainer_configs_train_a_tiny_model_for_a_step(published, tiny_encoder, offline, tmp_path):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MultipleNegativesRankingLoss

    folder = published.with_score.folder
    scored = load(folder, SCORED_PAIRS, tmp_path / "cache").shuffle(seed=0).select(range(8))
    trip = load(folder, TRIPLETS, tmp_path / "cache").select_columns(["anchor", "positive", "negative"]).select(
        range(8))
    model = SentenceTransformer(str(tiny_encoder), device="cpu")
    for name, data, loss in (("cosent", scored, CoSENTLoss(model)), ("mnrl", trip, MultipleNegativesRankingLoss(model))):
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / name), max_steps=1,
                                                    per_device_train_batch_size=4, report_to="none",
                                                    save_strategy="no", use_cpu=True, disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
        output = trainer.train()
        assert output.global_step == 1
        assert math.isfinite(output.training_loss)


@pytest.mark.parametrize("include_unknown", [False, True])
def test_commercial_only_publishes_only_commercial_sources(build_dir, rows, catalog, include_unknown, tmp_path):
    params = PublishParams(commercial_only=True, include_unknown_license=include_unknown, plots=False,
                           shard_rows=SHARD_ROWS)
    result = publish(build_dir, tmp_path, params, catalog)
    allowed = {"yes", "unknown"} if include_unknown else {"yes"}
    built = set(rows[M3E_HQ])
    included = {s for s in built if catalog.get(s).commercial_use(include_unknown)}
    assert set(result.sources) == included and set(result.excluded) == built - included
    assert "unknown" not in allowed or any(catalog.get(s).commercial == "unknown" for s in included)
    # A source the M3E table marks commercial but whose licence is unstated (lawzhidao, news2016zh, ...) is left
    # out unless asked for; a source marked "no" never gets in.
    unstated = {s for s in built if catalog.get(s).commercial == "yes" and not catalog.get(s).license_stated}
    assert unstated and (unstated <= included) == include_unknown
    assert all(catalog.get(s).commercial != "no" for s in included)
    for dataset, folder in ((M3E_HQ, result.m3e_hq.folder), (WITH_SCORE, result.with_score.folder)):
        kept = {s: r for s, r in rows[dataset].items() if s in included}
        expected = expected_configs(dataset, kept, catalog, include_unknown)
        names = [c["config_name"] for c in front_matter(folder)["configs"]]
        assert sorted(names) == sorted(expected)
        for config in names:
            t = config_table(folder, config)
            assert t.num_rows == expected[config]
            if "source" in t.column_names:  # every row's source, by the catalog and by the row's own flag
                assert all(catalog.get(s).commercial_use(include_unknown) for s in t["source"].to_pylist())
                assert set(t["commercial"].to_pylist()) <= allowed
        if dataset == WITH_SCORE:  # trainer configs carry no source: every row must be one of an included source
            every = [r for rs in kept.values() for r in rs]
            t = config_table(folder, TRIPLETS)
            assert Counter(zip(*(t[c].to_pylist() for c in ("anchor", "positive", "negative")),
                               strict=True)) == triples(every)
            t = config_table(folder, SCORED_PAIRS)
            assert Counter(zip(t["sentence1"].to_pylist(), t["sentence2"].to_pylist(), strict=True)) == pairs(every)
            check_exports(folder, kept)
        readme = (folder / "README.md").read_text(encoding="utf-8")
        assert "commercial-only export" in readme
        assert all(catalog.get(s).license in readme for s in included)


def check_exports(folder: Path, by_source: dict[str, list[dict]]) -> None:
    """Every export file is of a published source, and every line is one of that source's rows or pairs."""
    files = sorted((folder / "exports").rglob("*.jsonl"))
    assert files
    for path in files:
        source = path.stem
        assert source in by_source
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if path.parent.name == "flagembedding":
            built = {(r["text"], r["text_pos"]): r["text_neg"] for r in by_source[source]}
            assert all(built[(line["query"], line["pos"][0])] == line["neg"] for line in lines)
        else:
            assert Counter((line["sentence1"], line["sentence2"]) for line in lines) == pairs(by_source[source])


def test_exports_are_trainer_ready(published, rows, catalog, offline, tmp_path):
    folder = published.with_score.folder
    by_source = rows[WITH_SCORE]
    check_exports(folder, by_source)
    every = [r for rs in by_source.values() for r in rs]
    lines = {"flagembedding": sum(1 for r in every if r["text_neg"]), "uniem": sum(pairs(every).values())}
    for kind, keys in (("flagembedding", FLAG_KEYS), ("uniem", UNIEM_KEYS)):  # read as the trainers read them
        files = str(folder / "exports" / kind / "*.jsonl")
        loaded = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(tmp_path))
        assert set(loaded.column_names) == keys and loaded.num_rows == lines[kind]
    for source, source_rows in by_source.items():
        flag = folder / "exports" / "flagembedding" / f"{source}.jsonl"
        with_negatives = [r for r in source_rows if r["text_neg"]]
        if not with_negatives:
            assert not flag.exists()
            continue
        text = flag.read_text(encoding="utf-8")
        assert "\\u" not in text  # ensure_ascii=False: the Chinese is written as is
        lines = [json.loads(line) for line in text.splitlines()]
        assert len(lines) == len(with_negatives)
        for line in lines:
            assert set(line) == FLAG_KEYS
            assert isinstance(line["pos"], list) and len(line["pos"]) == len(line["pos_scores"]) == 1
            assert line["neg"] and len(line["neg"]) == len(line["neg_scores"])
            assert line["type"] == ("symmetric_sts" if catalog.get(source).homogeneous else "normal")
        uniem = [json.loads(line) for line in
                 (folder / "exports" / "uniem" / f"{source}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert all(set(line) == UNIEM_KEYS and -1 <= line["label"] <= 1 for line in uniem)


def test_flagembedding_lines_leave_out_rows_without_negatives(build_dir):
    table = max((pq.read_table(p) for p in (build_dir / "mine").glob("*.parquet")), key=len).slice(0, 3)
    rows = table.to_pylist()
    rows[1]["text_neg"], rows[1]["score_neg"] = [], []
    lines = flagembedding_lines(pa.Table.from_pylist(rows, schema=table.schema), "", "normal").to_dicts()
    assert [line["query"] for line in lines] == [rows[0]["text"], rows[2]["text"]]


def test_a_failed_publish_leaves_the_previous_one_intact(build_dir, catalog, offline, monkeypatch, tmp_path):
    out = tmp_path / "out"
    publish(build_dir, out, PublishParams(plots=False), catalog)
    before = {d: (out / d / SUMS_NAME).read_text() for d in (M3E_HQ, WITH_SCORE)}

    def crash(_table: pa.Table) -> pa.Table:
        raise OSError("disk full")

    monkeypatch.setattr(publish_module, "triplets", crash)  # midway through the second folder
    with pytest.raises(OSError, match="disk full"):
        publish(build_dir, out, PublishParams(), catalog)
    assert sorted(p.name for p in out.iterdir()) == [M3E_HQ, WITH_SCORE]
    for dataset in (M3E_HQ, WITH_SCORE):
        assert (out / dataset / SUMS_NAME).read_text() == before[dataset]
        check_sums(out / dataset)
        assert load(out / dataset, DEFAULT, tmp_path / "cache").num_rows > 0

    monkeypatch.undo()
    result = publish(build_dir, out, PublishParams(), catalog)  # a good publish replaces the old one
    assert sorted(p.name for p in out.iterdir()) == [M3E_HQ, WITH_SCORE]
    assert (out / M3E_HQ / SUMS_NAME).read_text() != before[M3E_HQ]
    assert any(f.startswith("plots/") for f in result.m3e_hq.files)


def test_what_a_killed_publish_left_is_cleared_and_the_previous_folder_put_back(build_dir, catalog, monkeypatch,
                                                                                 tmp_path):
    out = tmp_path / "out"
    publish(build_dir, out, PublishParams(plots=False), catalog)
    before = (out / M3E_HQ / SUMS_NAME).read_text()
    (out / M3E_HQ).rename(out / f".{M3E_HQ}.old-0123456789ab")  # killed between moving it aside and the swap
    shutil.copytree(out / WITH_SCORE, out / f".{WITH_SCORE}.tmp-0123456789ab")  # and a staged folder left

    def crash(_table: pa.Table) -> pa.Table:
        raise OSError("disk full")

    monkeypatch.setattr(publish_module, "triplets", crash)  # and this publish fails too
    with pytest.raises(OSError, match="disk full"):
        publish(build_dir, out, PublishParams(plots=False), catalog)
    assert sorted(p.name for p in out.iterdir()) == [M3E_HQ, WITH_SCORE]
    assert (out / M3E_HQ / SUMS_NAME).read_text() == before
    check_sums(out / M3E_HQ)


def check_sums(folder: Path) -> None:
    """SHA256SUMS lists every other file of the folder, each with its sha256."""
    listed = {}
    for line in (folder / SUMS_NAME).read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {SUMS_NAME}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_cards_parse_list_every_config_and_checksums_match(published, catalog):
    for dataset in (published.m3e_hq, published.with_score):
        folder = dataset.folder
        meta = front_matter(folder)
        assert meta["license"] == "other" and meta["language"] == ["zh"]
        assert {"sentence-similarity", "feature-extraction", "text-retrieval"} <= set(meta["task_categories"])
        assert meta["size_categories"] == ["n<1K"]  # the samples: fewer than 1,000 pairs
        names = [c["config_name"] for c in meta["configs"]]
        assert names == list(dataset.rows)
        assert [c["config_name"] for c in meta["configs"] if c.get("default")] == [DEFAULT]
        for config in names:
            assert config_table(folder, config).num_rows == dataset.rows[config]
        readme = (folder / "README.md").read_text(encoding="utf-8")
        for source in published.sources:
            assert catalog.get(source).license in readme
        assert "query_in_positive_min_coverage" in readme and "minhash.threshold" in readme
        plots = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", readme)
        assert plots and all((folder / p).read_bytes().startswith(b"\x89PNG") for p in plots)
        check_sums(folder)
        assert dataset.files == dict(line.split("  ", 1)[::-1] for line in (folder / SUMS_NAME).read_text().splitlines())
    assert "Models and mining" in (published.with_score.folder / "README.md").read_text(encoding="utf-8")


def test_shards_are_bounded_and_numbered(published):
    for folder in (published.m3e_hq.folder, published.with_score.folder):
        for config_dir in (folder / "data").iterdir():
            shards = sorted(config_dir.glob("*.parquet"))
            n = len(shards)
            assert [s.name for s in shards] == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
            assert all(pq.read_metadata(s).num_rows <= SHARD_ROWS for s in shards)
    assert len(list((published.with_score.folder / "data" / TRIPLETS).glob("*.parquet"))) > 1


def test_a_build_whose_files_disagree_with_its_manifest_is_refused(build_dir, catalog, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy, ignore=shutil.ignore_patterns("cache", "ingest", "filter"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"]["mine"]["sources"]["BQ"]["kept"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different builds"):
        publish(copy, tmp_path / "out", PublishParams(plots=False), catalog)
    assert not (tmp_path / "out" / M3E_HQ).exists() and not list((tmp_path / "out").iterdir())


def test_a_build_without_a_valid_finished_manifest_is_refused_in_one_line(build_dir, catalog, tmp_path):
    with pytest.raises(FileNotFoundError, match="build first"):
        publish(tmp_path, tmp_path / "out", PublishParams(plots=False), catalog)
    (tmp_path / "manifest.json").write_text('{"stages": {}}', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"manifest.json is not a build manifest \(created: Field required") as info:
        publish(tmp_path, tmp_path / "out", PublishParams(plots=False), catalog)
    assert "\n" not in str(info.value)
    manifest = json.loads((build_dir / "manifest.json").read_text(encoding="utf-8"))
    del manifest["stages"]["mine"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="has no mine stage: the build did not finish"):
        publish(tmp_path, tmp_path / "out", PublishParams(plots=False), catalog)
    assert not (tmp_path / "out").exists()


def test_params_are_strict():
    with pytest.raises(ValidationError):
        PublishParams(shard_rows=0)
    with pytest.raises(ValidationError):
        PublishParams(commercial=True)
    assert all(f.description for f in PublishParams.model_fields.values())


def test_the_card_declares_each_configs_features_as_loaded(published, offline, tmp_path):
    for folder in (published.m3e_hq.folder, published.with_score.folder):
        info = {entry["config_name"]: entry for entry in front_matter(folder)["dataset_info"]}
        assert set(info) == {c["config_name"] for c in front_matter(folder)["configs"]}
        for name, entry in info.items():
            loaded = load(folder, name, tmp_path)
            assert [f["name"] for f in entry["features"]] == loaded.column_names
            assert entry["splits"][0]["num_examples"] == loaded.num_rows
