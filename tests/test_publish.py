"""Publishing (flows.stages.publish) the samples build: every config of both folders loads offline with the build's rows,
the trainer configs train a tiny model for a step, the commercial-only export holds only commercial sources, a
failed publish leaves the previous one intact, and the cards parse and the checksums match."""

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

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
    DISTILL,
    LICENSES_NAME,
    M3E_HQ,
    NTUPLES,
    PAIRS,
    SCORED_PAIRS,
    SUMS_NAME,
    TRIPLETS,
    WITH_SCORE,
    PublishParams,
    PublishResult,
    Scale,
    flagembedding_lines,
    publish,
)
from m3e_hq.schemas import ManifestError
from m3e_hq.sources.catalog import Catalog

SHARD_ROWS = 500
STAGE = {M3E_HQ: "dedup", WITH_SCORE: "mine"}
FLAG_KEYS = {"query", "pos", "neg", "pos_scores", "neg_scores", "type"}  # no prompt: the build has none
NEGATIVES = 7  # the build's num_negatives
TRAINERS = {PAIRS, TRIPLETS, SCORED_PAIRS, DISTILL}  # the trainer configs' own folders (ntuples reads distill's)
TEMPERATURE = PublishParams().teacher_temperature
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
    return pa.concat_tables(pq.read_table(p, columns=entry.get("columns")) for p in config_paths(folder, config))


def config_paths(folder: Path, config: str) -> list[Path]:
    entry = next(c for c in front_matter(folder)["configs"] if c["config_name"] == config)
    (files,) = entry["data_files"]
    globs = [files["path"]] if isinstance(files["path"], str) else files["path"]
    return [p for g in globs for p in sorted(folder.glob(g))]


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
    counts[PAIRS] = counts[DEFAULT]
    if dataset == WITH_SCORE:
        counts[TRIPLETS] = sum(len(r["text_neg"]) for rs in by_source.values() for r in rs)
        counts[SCORED_PAIRS] = counts[DEFAULT] + counts[TRIPLETS]
        counts[DISTILL] = counts[NTUPLES] = sum(len(r["text_neg"]) == NEGATIVES for rs in by_source.values()
                                                for r in rs)
    return counts | {s: len(r) for s, r in by_source.items() if r}


def tuples(source_rows: list[dict]) -> Counter:
    return Counter((r["text"], r["text_pos"], *r["text_neg"]) for r in source_rows if len(r["text_neg"]) == NEGATIVES)


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
        every = [r for rs in by_source.values() for r in rs]
        two = load(folder, PAIRS, tmp_path)
        assert two.column_names == ["text", "text_pos"]
        assert Counter(zip(two["text"], two["text_pos"], strict=True)) == Counter((r["text"], r["text_pos"])
                                                                                 for r in every)
        if dataset == WITH_SCORE:
            trip = load(folder, TRIPLETS, tmp_path)
            assert trip.column_names == ["text", "text_pos", "text_neg"]
            assert Counter(zip(trip["text"], trip["text_pos"], trip["text_neg"], strict=True)) == triples(every)
            scored = load(folder, SCORED_PAIRS, tmp_path)
            assert scored.column_names == ["sentence1", "sentence2", "label"]
            assert Counter(zip(scored["sentence1"], scored["sentence2"], strict=True)) == pairs(every)
            assert published.score_scale == "cosine[-1,1]"
            assert all(-1 <= s <= 1 for s in scored["label"])
            negatives = [f"text_neg_{i}" for i in range(1, NEGATIVES + 1)]
            ntuples = load(folder, NTUPLES, tmp_path)
            assert ntuples.column_names == ["text", "text_pos", *negatives]
            assert Counter(zip(*(ntuples[c] for c in ntuples.column_names), strict=True)) == tuples(every)
            distill = load(folder, DISTILL, tmp_path)
            assert distill.column_names == ["text", "text_pos", *negatives, "label"]
            scores = {(r["text"], r["text_pos"]): [r["score_pos"], *r["score_neg"]] for r in every}
            for row in distill:  # the label is the row's scores, positive first, on the build's scale
                assert row["label"] == pytest.approx(scores[(row["text"], row["text_pos"])], abs=1e-6)
    assert published.m3e_hq.rows == expected_configs(M3E_HQ, rows[M3E_HQ], catalog, include_unknown=False)
    assert published.with_score.rows == expected_configs(WITH_SCORE, rows[WITH_SCORE], catalog, include_unknown=False)


def test_every_trainer_config_trains_a_tiny_model_for_a_step_as_loaded(published, tiny_encoder, offline, tmp_path):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        CoSENTLoss,
        DistillKLDivLoss,
        MarginMSELoss,
        MultipleNegativesRankingLoss,
    )

    model = SentenceTransformer(str(tiny_encoder), device="cpu")
    runs = [(published.m3e_hq.folder, PAIRS, MultipleNegativesRankingLoss(model)),
            *((published.with_score.folder, config, MultipleNegativesRankingLoss(model))
              for config in (PAIRS, TRIPLETS, NTUPLES)),
            (published.with_score.folder, SCORED_PAIRS, CoSENTLoss(model)),
            (published.with_score.folder, DISTILL, MarginMSELoss(model)),
            (published.with_score.folder, DISTILL, DistillKLDivLoss(model, teacher_temperature=TEMPERATURE))]
    for i, (folder, config, loss) in enumerate(runs):
        data = load(folder, config, tmp_path / "cache").select(range(8))  # as loaded: no column dropped or renamed
        sampler = BatchSamplers.BATCH_SAMPLER if config in (SCORED_PAIRS, DISTILL) else BatchSamplers.NO_DUPLICATES
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / str(i)), max_steps=1,
                                                    per_device_train_batch_size=4, report_to="none",
                                                    save_strategy="no", use_cpu=True, disable_tqdm=True,
                                                    batch_sampler=sampler)
        output = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
        assert output.global_step == 1, (folder.name, config)
        assert math.isfinite(output.training_loss), (folder.name, config, type(loss).__name__)


def test_uniem_detects_each_record_shape_and_trains_a_step_on_it(published, tiny_encoder, offline, tmp_path):
    """uniem's own record detection, dataset, collators, model and losses (its FineTuner only wires these with an
    accelerate older than this project's) on each config as loaded."""
    pytest.importorskip("uniem", reason="pip install --no-deps uniem==0.3.3 (its pins predate datasets 3)")
    import torch
    from transformers import AutoModel, AutoTokenizer
    from uniem.data import FinetuneDataset, PairCollator, ScoredPairCollator, TripletCollator
    from uniem.data_structures import RecordType, infer_record_type
    from uniem.model import (
        EmbedderForPairInBatchNegTrain,
        EmbedderForScoredPairTrain,
        EmbedderForTripletInBatchNegTrain,
        LastMeanEmbedder,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder / "bert")
    shapes = {PAIRS: (RecordType.PAIR, PairCollator, EmbedderForPairInBatchNegTrain),
              TRIPLETS: (RecordType.TRIPLET, TripletCollator, EmbedderForTripletInBatchNegTrain),
              SCORED_PAIRS: (RecordType.SCORED_PAIR, ScoredPairCollator, EmbedderForScoredPairTrain)}
    runs = [(published.m3e_hq.folder, PAIRS), *((published.with_score.folder, c) for c in shapes)]
    for folder, config in runs:
        record_type, collator, trainer_model = shapes[config]
        data = load(folder, config, tmp_path / "cache").select(range(4))
        assert infer_record_type(data[0]) is record_type
        dataset = FinetuneDataset(data)  # builds each row's record from its columns: extra columns would fail
        batch = collator(tokenizer, max_length=64)([dataset[i] for i in range(len(dataset))])
        model = trainer_model(LastMeanEmbedder(AutoModel.from_pretrained(tiny_encoder / "bert")))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), (folder.name, config)


def flagembedding_modules() -> Any:
    """FlagEmbedding 1.4.2's fine-tune dataset, collator, arguments and encoder-only model. Its package __init__
    imports its inference models, which need transformers < 5 (transformers.modeling_attn_mask_utils), so the
    fine-tune packages are imported without running the __init__ files above them."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("FlagEmbedding")
    if spec is None:
        pytest.skip('FlagEmbedding is not installed (pip install -e ".[dev]" installs it)')
    root = Path(spec.origin).parent
    for package in ("", "abc", "abc/finetune", "finetune", "finetune/embedder", "finetune/embedder/encoder_only",
                    "finetune/embedder/encoder_only/base"):
        name = ".".join(["FlagEmbedding", *filter(None, package.split("/"))])
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root / package)]
            sys.modules[name] = module
    from FlagEmbedding.abc.finetune import embedder
    from FlagEmbedding.finetune.embedder.encoder_only.base import modeling

    return embedder, modeling


def test_flagembedding_reads_the_export_and_distils_a_step_with_sharp_targets(published, tiny_encoder, offline,
                                                                               tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    embedder, modeling = flagembedding_modules()
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder / "bert")
    folder = published.with_score.folder / "exports" / "flagembedding"
    args = embedder.AbsEmbedderDataArguments(train_data=[str(folder)], train_group_size=NEGATIVES + 1,
                                             knowledge_distillation=True, query_max_len=64, passage_max_len=64,
                                             query_instruction_for_retrieval="为这个句子生成表示以用于检索相关文章：",
                                             query_instruction_format="{}{}", cache_path=str(tmp_path / "cache"))
    dataset = embedder.AbsEmbedderTrainDataset(args, tokenizer)  # every file of the folder, concatenated
    with_negatives = [r for rs in published_rows(published) for r in rs if r["text_neg"]]
    assert len(dataset) == len(with_negatives)
    rows = {(r["text"], r["text_pos"]): r for r in with_negatives}
    for i in range(0, len(dataset), 25):
        query, passages, teacher_scores = dataset[i]
        assert query.startswith(args.query_instruction_for_retrieval)  # no prompt key: the user's instruction
        row = rows[(query.removeprefix(args.query_instruction_for_retrieval), passages[0])]
        assert len(passages) == len(teacher_scores) == NEGATIVES + 1
        # FlagEmbedding softmaxes these as they are: the published scores over the temperature it trains with
        assert teacher_scores[0] == pytest.approx(row["score_pos"] / TEMPERATURE, rel=1e-5)
        scores = dict(zip(row["text_neg"], row["score_neg"], strict=True))
        assert teacher_scores[1:] == pytest.approx([scores[p] / TEMPERATURE for p in passages[1:]], rel=1e-5)
    collator = embedder.AbsEmbedderCollator(tokenizer, query_max_len=64, passage_max_len=64)
    batch = collator([dataset[i] for i in range(2)])
    model = modeling.BiEncoderOnlyEmbedderModel(AutoModel.from_pretrained(tiny_encoder / "bert"), tokenizer,
                                                temperature=TEMPERATURE, kd_loss_type="kl_div")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    output = model(batch["queries"], batch["passages"], batch["teacher_scores"])
    output.loss.backward()
    optimizer.step()
    assert torch.isfinite(output.loss)


def published_rows(published: PublishResult) -> list[list[dict]]:
    folder = published.with_score.folder / "data"
    return [pq.read_table(d).to_pylist() for d in sorted(folder.iterdir())]


def test_flagembedding_lines_carry_a_prompt_only_when_the_build_has_one(build_dir):
    table = max((pq.read_table(p) for p in (build_dir / "mine").glob("*.parquet")), key=len).slice(0, 3)
    cosine = Scale.parse("cosine[-1,1]")
    assert "prompt" not in flagembedding_lines(table, None, "normal", cosine, 0.02).columns
    lines = flagembedding_lines(table, "查询：", "normal", cosine, 0.02).to_dicts()
    assert [line["prompt"] for line in lines] == ["查询："] * 3
    assert lines[0]["pos_scores"][0] == pytest.approx(table["score_pos"][0].as_py() / 0.02, rel=1e-6)
    sigmoid = Scale.parse("sigmoid[0,1]")
    probabilities = pa.table({**{c: table[c] for c in ("text", "text_pos", "text_neg")},
                              "score_pos": pa.array([0.5, 0.9, 1.0], pa.float32()),
                              "score_neg": pa.array([[0.1]] * 3, pa.list_(pa.float32()))})
    logits = flagembedding_lines(probabilities, None, "normal", sigmoid, 0.02)["pos_scores"].to_list()
    assert [s[0] for s in logits] == pytest.approx([0.0, math.log(9), math.log((1 - 1e-6) / 1e-6)], rel=1e-4)


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
            assert Counter(zip(*(t[c].to_pylist() for c in ("text", "text_pos", "text_neg")),
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
    lines = flagembedding_lines(pa.Table.from_pylist(rows, schema=table.schema), None, "normal",
                                Scale.parse("cosine[-1,1]"), 0.02).to_dicts()
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
        for config_dir in [*(folder / "data").iterdir(), *(p for p in folder.iterdir() if p.name in TRAINERS)]:
            shards = sorted(config_dir.glob("*.parquet"))
            n = len(shards)
            assert [s.name for s in shards] == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
            assert all(pq.read_metadata(s).num_rows <= SHARD_ROWS for s in shards)
        assert not [p for p in folder.rglob(".*") if p.is_file()]  # no spill or unnamed shard left
    assert len(list((published.with_score.folder / TRIPLETS).glob("*.parquet"))) > 1


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


POOL_SOURCES = ["dureader_robust", "csl", "miracl-corpus", "lawzhidao", "xlsum", "lcqmc"]


@pytest.fixture(scope="module")
def pool_all_build(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Commercial, licence-unstated and non-commercial sources mined with one pool (`pool: all`)."""
    from m3e_hq.flows.core.negatives import NegativeParams
    from m3e_hq.flows.pipeline.build import build_sources
    from m3e_hq.flows.pipeline.params import BuildParams
    from m3e_hq.flows.stages.mine import MineParams

    out = tmp_path_factory.mktemp("pool-all")
    mine = MineParams(encoder=str(tiny_encoder), pool="all", false_negative_margin=None,
                      negatives=NegativeParams(relative_margin=None))
    build_sources(BuildParams(samples=True, sources=POOL_SOURCES, out_dir=out, cache_dir=out / "cache", mine=mine))
    return out


TEXT_COLUMNS = re.compile(r"^(text|text_pos|text_neg(_\d+)?|sentence[12]|query|pos|neg)$")


def every_text(folder: Path) -> list[str]:
    """Every text (query, positive, negative) in every Parquet and JSON Lines file of a published folder."""
    texts: list[str] = []
    for path in folder.rglob("*.parquet"):
        table = pq.read_table(path)
        for name in filter(TEXT_COLUMNS.match, table.column_names):
            values = table[name].combine_chunks()
            texts += (values.flatten() if pa.types.is_list(values.type) else values).to_pylist()
    for path in folder.rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            for name, value in json.loads(line).items():
                if TEXT_COLUMNS.match(name):
                    texts += value if isinstance(value, list) else [value]
    return texts


@pytest.mark.parametrize("include_unknown", [False, True])
def test_a_commercial_export_of_a_build_mined_across_sources_holds_no_other_text(pool_all_build, catalog,
                                                                                 include_unknown, tmp_path):
    params = PublishParams(commercial_only=True, include_unknown_license=include_unknown, plots=False)
    result = publish(pool_all_build, tmp_path, params, catalog)
    included = [s for s in POOL_SOURCES if catalog.get(s).commercial_use(include_unknown)]
    assert result.sources == included
    own = {t for s in included for r in pq.read_table(pool_all_build / "dedup" / f"{s}.parquet").to_pylist()
           for t in (r["text"], r["text_pos"])}
    for folder in (result.m3e_hq.folder, result.with_score.folder):
        texts = every_text(folder)
        assert texts and not set(texts) - own, sorted(set(texts) - own)[:3]
    mined = [n for s in included for r in pq.read_table(pool_all_build / "mine" / f"{s}.parquet").to_pylist()
             for n in r["text_neg"]]
    assert mined and not set(mined) - own  # mined within the licence class: nothing for the export to remove
    readme = (result.with_score.folder / "README.md").read_text(encoding="utf-8")
    assert "licence class (`pool: all`)" in readme and "0 that were not" in readme
    # The full publish of the same build: the non-commercial rows draw on the non-commercial sources' texts.
    full = publish(pool_all_build, tmp_path / "full", PublishParams(plots=False), catalog)
    xlsum = pq.read_table(full.with_score.folder / "data" / "xlsum").to_pylist()
    assert xlsum and all(n not in own for r in xlsum for n in r["text_neg"])



def test_a_commercial_export_removes_negatives_of_other_sources_and_clips_scores(build_dir, catalog, tmp_path):
    """A build whose commercial rows carry a non-commercial negative (as `pool: all` mined before negatives kept to
    their licence class) and a cosine rounded past 1: the export drops that negative with its score, says so, and
    holds every score to the scale."""
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy, ignore=shutil.ignore_patterns("cache", "ingest", "filter"))
    foreign = pq.read_table(copy / "dedup" / "xlsum.parquet")["text_pos"][0].as_py()
    source, path = next((s, p) for s in catalog.names if catalog.get(s).commercial_use()
                        for p in [copy / "mine" / f"{s}.parquet"]
                        if any(len(r) >= 3 for r in pq.read_table(p)["text_neg"].to_pylist()))
    rows = pq.read_table(path).to_pylist()
    rows.insert(0, rows.pop(next(i for i, r in enumerate(rows) if len(r["text_neg"]) >= 3)))
    rows[0]["text_neg"][1], rows[0]["score_pos"] = foreign, 1.0000001
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    params = PublishParams(commercial_only=True, plots=False, shard_rows=SHARD_ROWS)
    result = publish(copy, tmp_path / "out", params, catalog)
    folder = result.with_score.folder
    assert foreign in (r["text_pos"] for r in pq.read_table(copy / "dedup" / "xlsum.parquet").to_pylist())
    assert foreign not in every_text(folder)
    (published_row,) = [r for r in pq.read_table(folder / "data" / source).to_pylist() if r["id"] == rows[0]["id"]]
    assert published_row["text_neg"] == rows[0]["text_neg"][:1] + rows[0]["text_neg"][2:]
    assert published_row["score_neg"] == pytest.approx(rows[0]["score_neg"][:1] + rows[0]["score_neg"][2:])
    assert published_row["score_pos"] == 1.0
    assert "1 that were not" in (folder / "README.md").read_text(encoding="utf-8")
    full = publish(copy, tmp_path / "full", PublishParams(plots=False), catalog)  # not commercial: kept as built
    (kept,) = [r for r in pq.read_table(full.with_score.folder / "data" / source).to_pylist()
               if r["id"] == rows[0]["id"]]
    assert kept["text_neg"] == rows[0]["text_neg"] and kept["score_pos"] == 1.0
    assert max(pq.read_table(full.with_score.folder / SCORED_PAIRS)["label"].to_pylist()) <= 1.0


def test_trainer_configs_are_shuffled_across_sources_by_a_recorded_seed(build_dir, catalog, published, tmp_path):
    folder = published.with_score.folder
    for config in (PAIRS, TRIPLETS, SCORED_PAIRS, DISTILL):
        anchors = config_table(folder, config).column(0).to_pylist()
        by_source = [r["text"] for rs in published_rows(published) for r in rs]
        first = set(by_source[:20])  # the first source's queries (cmrc2018): spread over the config, not first
        positions = [i for i, a in enumerate(anchors) if a in first]
        assert positions and max(positions) > len(anchors) / 2, config
    again = publish(build_dir, tmp_path / "again", PublishParams(shard_rows=SHARD_ROWS, plots=False), catalog)
    other = publish(build_dir, tmp_path / "other", PublishParams(shard_rows=SHARD_ROWS, plots=False, seed=1), catalog)
    for config in (PAIRS, TRIPLETS, SCORED_PAIRS, DISTILL):
        shards = sorted(p.relative_to(folder) for p in (folder / config).glob("*.parquet"))
        same = [(folder / p).read_bytes() == (again.with_score.folder / p).read_bytes() for p in shards]
        assert all(same), config  # the same seed: the same bytes
        ours, theirs = config_table(folder, config), config_table(other.with_score.folder, config)
        assert ours.num_rows == theirs.num_rows and ours != theirs  # another seed: another order
        assert Counter(ours.column(0).to_pylist()) == Counter(theirs.column(0).to_pylist())
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "shuffled across sources (seed 0)" in readme and "BatchSamplers.NO_DUPLICATES" in readme


def test_each_folder_of_a_published_set_loads_by_glob(published, offline, tmp_path):
    import polars as pl

    for folder in (published.m3e_hq.folder, published.with_score.folder):
        rows = sum(published.m3e_hq.source_rows.values() if folder == published.m3e_hq.folder
                   else published.with_score.source_rows.values())
        data = datasets.load_dataset("parquet", data_files=str(folder / "data" / "*" / "*.parquet"), split="train",
                                     cache_dir=str(tmp_path))
        assert data.num_rows == rows == pl.read_parquet(folder / "data" / "**" / "*.parquet").height
        for name in (PAIRS, TRIPLETS, SCORED_PAIRS, DISTILL):
            if (folder / name).is_dir():
                assert pl.read_parquet(folder / name / "*.parquet").height == config_table(folder, name).num_rows


def test_the_card_loads_without_warnings_and_says_what_it_was_built_from(published, build_dir, catalog, offline,
                                                                         capfd, tmp_path):
    for dataset in (published.m3e_hq, published.with_score):
        meta = front_matter(dataset.folder)
        assert meta["license_name"] == "per-source" and meta["license_link"] == LICENSES_NAME
        licences = (dataset.folder / LICENSES_NAME).read_text(encoding="utf-8")
        assert all(catalog.get(s).license in licences for s in published.sources)
        for entry in meta["dataset_info"]:
            capfd.readouterr()
            loaded = load(dataset.folder, entry["config_name"], tmp_path)
            (split,) = entry["splits"]
            assert split["num_examples"] == loaded.num_rows and split["num_bytes"] > 0
            assert "malformed" not in capfd.readouterr().err, entry["config_name"]
        readme = (dataset.folder / "README.md").read_text(encoding="utf-8")
        assert "**the shipped samples**" in readme
        assert "demo encoder" not in readme  # the tests' build names its encoder
    from m3e_hq.flows.core.model_names import DEFAULT_ENCODER
    from m3e_hq.flows.stages.publish import read_manifest

    manifest = read_manifest(build_dir)
    manifest.params["mine"]["encoder"] = DEFAULT_ENCODER
    manifest.write(tmp_path / "demo")
    for stage in ("dedup", "mine"):
        shutil.copytree(build_dir / stage, tmp_path / "demo" / stage)
    demo = publish(tmp_path / "demo", tmp_path / "demo-out", PublishParams(plots=False), catalog)
    card = (demo.with_score.folder / "README.md").read_text(encoding="utf-8")
    assert f"demo encoder `{DEFAULT_ENCODER}`" in card and "[UNK]" in card


POLARS_OVER_LIMIT = """
import resource, sys
from pathlib import Path
import polars as pl
from m3e_hq.flows.core.accounting import OutputError, writing
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # Python ignores SIGXFSZ: a longer write fails with EFBIG
path, lines = Path(sys.argv[1]), pl.DataFrame({"text": ["字" * 100] * 10})
try:
    lines.write_ndjson(path)
except OSError as exc:
    print(exc.errno, exc)
try:
    with writing(path):
        lines.write_ndjson(path)
except OutputError as exc:
    print(exc.errno, exc.strerror, exc.filename)
"""


def test_polars_write_errors_carry_no_errno_and_become_output_errors_with_theirs(tmp_path):
    path = tmp_path / "exports" / "ocnli.jsonl"
    path.parent.mkdir()
    done = subprocess.run([sys.executable, "-c", POLARS_OVER_LIMIT, str(path)], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.splitlines() == ["None File too large (os error 27)", f"27 File too large {path}"]
