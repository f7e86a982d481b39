"""The catalog: the 29 sources with the M3E table's values, and clear errors for a broken catalog."""

from pathlib import Path

import pytest
import yaml

from m3e_hq.sources.catalog import CATALOG_PATH, CatalogError, load_catalog

# The M3E dataset table (moka-ai/m3e-base model card), column by column as printed there:
# name, 领域, 数量, 任务类型, Prompt, 质量, 是否开源/研究使用, 是否商用, 是否同质.
M3E_TABLE = """
cmrc2018 百科 14,363 问答 问答 优 是 否 否
belle_2m 百科 2,000,000 指令微调 无 优 是 否 否
firefily 百科 1,649,399 指令微调 无 优 未说明 未说明 否
alpaca_gpt4 百科 48,818 指令微调 无 优 是 否 否
zhihu_kol 百科 1,006,218 问答 问答 优 未说明 未说明 否
hc3_chinese 百科 39,781 问答 问答 良 是 未说明 否
amazon_reviews_multi 电商 210,000 问答+文本分类 摘要 优 是 否 否
mlqa 百科 85,853 问答 问答 良 是 未说明 否
xlsum 新闻 93,404 摘要 摘要 良 是 否 否
ocnli 口语 17,726 自然语言推理 推理 良 是 否 是
BQ 金融 60,000 文本分类 相似 良 是 否 是
lcqmc 口语 149,226 文本分类 相似 良 是 否 是
paws-x 百科 23,576 文本分类 相似 优 是 是 是
wiki_atomic_edit 百科 1,213,780 平行语义 相似 优 未说明 未说明 是
chatmed_consult 医药 549,326 问答 问答 优 是 否 否
webqa 百科 42,216 问答 问答 优 是 未说明 否
dureader_robust 百科 65,937 机器阅读理解+问答 问答 优 是 是 否
csl 学术 395,927 语料 摘要 优 是 是 否
miracl-corpus 百科 4,934,368 语料 摘要 优 是 是 否
lawzhidao 法律 36,368 问答 问答 优 是 是 否
CINLID 成语 34,746 平行语义 相似 优 是 否 是
DuSQL SQL 25,003 NL2SQL SQL 优 是 否 否
Zhuiyi-NL2SQL SQL 45,918 NL2SQL SQL 优 是 否 否
Cspider SQL 7,785 NL2SQL SQL 优 是 否 否
news2016zh 新闻 2,507,549 语料 摘要 良 是 是 否
baike2018qa 百科 1,470,142 问答 问答 良 是 是 否
webtext2019zh 百科 4,258,310 问答 问答 优 是 是 否
SimCLUE 百科 775,593 平行语义 相似 良 是 否 是
Chinese-SQuAD 新闻 76,449 机器阅读理解 问答 优 是 否 否
"""


def table_rows() -> list[list[str]]:
    return [line.split() for line in M3E_TABLE.strip().splitlines()]


def test_catalog_has_the_29_sources_in_table_order(catalog):
    assert catalog.names == [row[0] for row in table_rows()]
    assert len(catalog.names) == 29


@pytest.mark.parametrize("row", table_rows(), ids=lambda row: row[0])
def test_catalog_values_match_the_m3e_table(catalog, row):
    name, domain, count, tasks, prompt, quality, research, commercial, homogeneous = row
    source = catalog.get(name)
    assert source.domain.label_zh == domain
    assert source.reported_rows == int(count.replace(",", ""))
    assert [t.label_zh for t in source.task_types] == tasks.split("+")
    assert source.prompt.label_zh == prompt
    assert source.quality.label_zh == quality
    assert source.research_use.label_zh == research
    assert source.commercial.label_zh == commercial
    assert source.homogeneous == (homogeneous == "是")


def test_every_source_says_how_to_obtain_it_and_its_licence(catalog):
    for source in catalog.sources:
        assert source.license.strip(), source.name
        assert source.provider.strip() and source.description.strip(), source.name
        if source.obtain.kind == "hf":
            assert source.obtain.allow_patterns
        if source.obtain.kind == "manual":
            assert source.obtain.page.startswith("https://") and source.obtain.files


def test_defunct_amazon_reviews_is_marked_unavailable(catalog):
    amazon = catalog.get("amazon_reviews_multi")
    assert not amazon.available
    assert "taken down" in amazon.obtain.unavailable
    assert all(s.available for s in catalog.sources if s.name != "amazon_reviews_multi")


def test_select_keeps_catalog_order_and_rejects_unknown_names(catalog):
    assert [s.name for s in catalog.select(["ocnli", "cmrc2018"])] == ["cmrc2018", "ocnli"]
    with pytest.raises(KeyError, match="unknown sources \\['nope'\\]"):
        catalog.select(["ocnli", "nope"])


def write_catalog(tmp_path: Path, mutate) -> Path:
    entries = yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8"))
    mutate(entries)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")
    return path


def test_catalog_errors_name_the_source_and_field(tmp_path):
    def break_entries(entries):
        entries[0]["obtain"]["revision"] = "main"  # not a 40-character commit
        entries[9]["domain"] = "sports"
        entries[20]["adapter"]["name"] = "xml"
        entries[10]["eval_splits"] = ["dev"]

    with pytest.raises(CatalogError) as err:
        load_catalog(write_catalog(tmp_path, break_entries))
    message = str(err.value)
    assert "source 'cmrc2018' field obtain.hf.revision" in message
    assert "source 'ocnli' field domain" in message
    assert "source 'CINLID' field adapter" in message
    assert "eval_splits ['dev'] are not splits of this source" in message


def test_duplicate_names_and_non_list_catalogs_are_rejected(tmp_path):
    with pytest.raises(CatalogError, match="duplicate source names \\['cmrc2018'\\]"):
        load_catalog(write_catalog(tmp_path, lambda entries: entries.append(dict(entries[0]))))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: cmrc2018\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="must be a YAML list"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "absent.yaml")


def test_a_manual_sources_file_list_must_name_its_globs_and_their_companions(tmp_path):
    def drop_a_tables_file(entries):
        zhuiyi = next(e for e in entries if e["name"] == "Zhuiyi-NL2SQL")
        zhuiyi["obtain"]["files"].remove("val/val.tables.json")

    with pytest.raises(CatalogError, match="source 'Zhuiyi-NL2SQL': .*must name the file globs and their companions"):
        load_catalog(write_catalog(tmp_path, drop_a_tables_file))
