"""One parameter path: `m3e-hq build`'s options are BuildParams' marked fields, a --config file loads BuildParams,
the options given win over it, errors name the file and field, and the flow and the deployment take BuildParams."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate
from pydantic import ValidationError as PydanticValidationError
from typer.testing import CliRunner

from m3e_hq.flows.cli import app, build_options, full_command
from m3e_hq.flows.pipeline import build as build_module
from m3e_hq.flows.pipeline.build import build_m3e_hq
from m3e_hq.flows.pipeline.params import BuildParams, cli_fields
from m3e_hq.sources.catalog import default_catalog

ROOT = Path(__file__).resolve().parent.parent
# The options `m3e-hq build` had before they were derived, each with the field it sets.
OPTIONS = {
    "--samples": ("samples",), "--raw-dir": ("raw_dir",), "--sources": ("sources",), "--out": ("out_dir",),
    "--max-chars": ("max_chars",), "--cache-dir": ("cache_dir",), "--manual-dir": ("manual_dir",),
    "--require-all": ("require_all",), "--dedup-on": ("dedup", "on"), "--near-threshold": ("dedup", "minhash",
                                                                                             "threshold"),
    "--near": ("dedup", "near"), "--keep-eval-splits": ("dedup", "exclude_eval_splits"),
    "--decontaminate": ("dedup", "decontaminate"), "--filters": ("filters",), "--encoder": ("mine", "encoder"),
    "--teacher": ("mine", "teacher"), "--device": ("mine", "device"), "--search": ("mine", "search"),
    "--num-negatives": ("mine", "negatives", "num_negatives"), "--seed": ("mine", "negatives", "seed"),
    "--min-pair-score": ("mine", "min_pair_score"), "--encode-shards": ("mine", "encode_shards"),
    "--mine": ("mine",), "--commercial-only": ("publish", "commercial_only"),
    "--include-unknown-license": ("publish", "include_unknown_license"), "--push-to-hub": ("push_to_hub",),
}


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[BuildParams]:
    """`m3e-hq build` with the flow replaced by one that records the BuildParams it is given."""
    given: list[BuildParams] = []

    class Flow:
        def with_options(self, **options: object) -> "Flow":
            return self

        def __call__(self, params: BuildParams) -> dict:
            given.append(params)
            return {"results": [], "stages": {}, "manifest": "manifest.json", "published": {"folders": {}},
                    "problem": None}

    monkeypatch.setattr(build_module, "build_m3e_hq", Flow())
    return given


def build(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["build", *args])
    return result.exit_code, result.output


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else json.dumps(data), encoding="utf-8")
    return path


def test_the_build_options_are_exactly_the_marked_fields():
    command = full_command("build")
    options = {param.opts[0]: param for param in command.params}
    assert set(options) == {*OPTIONS, "--config", "--task-runner", "--ray-address"}
    assert {f.names[0].split("/")[0]: f.path for f in cli_fields()} == OPTIONS
    assert options["--sources"].opts == ["--sources", "-s"] and options["--near"].secondary_opts == ["--no-near"]
    threshold = build_options()["near_threshold"].info
    assert options["--near-threshold"].help == threshold.description and options["--near-threshold"].default == 0.875
    assert options["--max-chars"].default == BuildParams().max_chars
    assert options["--max-chars"].help == BuildParams.model_fields["max_chars"].description
    assert options["--keep-eval-splits"].default is False  # the opposite of dedup.exclude_eval_splits
    assert options["--mine"].metavar == "FILE" and "MineParams fields" in options["--mine"].help


def test_the_options_reach_the_flow_as_build_params(runs, tmp_path):
    code, output = build("--samples", "-s", "ocnli,lcqmc", "-s", "csl", "--out", str(tmp_path), "--no-near",
                         "--keep-eval-splits", "--near-threshold", "0.7", "--num-negatives", "3",
                         "--commercial-only", "--search", "faiss-cpu")
    assert code == 0, output
    [params] = runs
    assert params.samples and params.sources == ["ocnli", "lcqmc", "csl"] and params.out_dir == tmp_path
    assert not params.dedup.near and not params.dedup.exclude_eval_splits and params.dedup.minhash.threshold == 0.7
    assert params.mine.negatives.num_negatives == 3 and params.mine.search == "faiss-cpu"
    assert params.publish.commercial_only and not params.publish.include_unknown_license
    assert params.max_chars == BuildParams().max_chars  # the options not given keep the fields' defaults


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_loads_build_params(runs, tmp_path, suffix):
    data = {"samples": True, "sources": ["ocnli"], "out_dir": str(tmp_path), "dedup": {"on": "query", "near": False,
            "minhash": {"threshold": 0.6}}, "filters": {"max_markup": 5}, "mine": {"pool": "all", "negatives": {
            "num_negatives": 2}}, "publish": {"plots": False, "commercial_only": True}}
    code, output = build("--config", str(write(tmp_path / f"build{suffix}", data)))
    assert code == 0, output
    [params] = runs
    folders = {"cache_dir", "manual_dir"}  # resolved before the flow runs
    assert params.model_dump(exclude=folders) == BuildParams.model_validate(data).model_dump(exclude=folders)
    assert (params.cache_dir, params.manual_dir) == (BuildParams().cache_root, BuildParams().manual_root)
    assert params.dedup.minhash.threshold == 0.6 and params.mine.negatives.num_negatives == 2


def test_the_options_given_win_over_the_files(runs, tmp_path):
    config = write(tmp_path / "build.yaml", {"samples": True, "out_dir": str(tmp_path), "dedup": {"near": False,
                   "minhash": {"threshold": 0.6}}, "mine": {"encoder": "from-config", "teacher": "from-config",
                   "negatives": {"seed": 1}}, "filters": {"max_markup": 5, "max_char_run": 4}})
    mine = write(tmp_path / "mine.json", {"teacher": "from-mine-file", "device": "cpu", "negatives": {"seed": 2}})
    filters = write(tmp_path / "filters.yaml", {"max_markup": 7})
    code, output = build("--config", str(config), "--mine", str(mine), "--filters", str(filters),
                         "--near-threshold", "0.9", "--device", "cuda:1", "--seed", "3")
    assert code == 0, output
    [params] = runs
    assert params.dedup.minhash.threshold == 0.9  # the option over the config file
    assert params.dedup.near is False  # --near not given: its default does not override the file
    assert params.mine.encoder == "from-config" and params.mine.teacher == "from-mine-file"
    assert params.mine.device == "cuda:1" and params.mine.negatives.seed == 3
    assert params.filters.max_markup == 7 and params.filters.max_char_run == 4


def test_invalid_values_name_the_file_and_the_field_or_the_option(runs, tmp_path):
    config = write(tmp_path / "build.yaml", {"max_chars": 0, "dedup": {"nearr": True}})
    code, output = build("--config", str(config))
    assert code == 2 and runs == []
    assert f"error: {config}: max_chars: Input should be greater than or equal to 1" in output
    assert f"error: {config}: dedup.nearr: Extra inputs are not permitted" in output

    config = write(tmp_path / "build.json", {"dedup": {"minhash": {"threshold": 2}}})
    code, output = build("--config", str(config))
    assert code == 2 and f"error: {config}: dedup.minhash: threshold must be in (0, 1], got 2" in output
    code, output = build("--config", str(config), "--near-threshold", "0")
    assert code == 2 and "error: --near-threshold: threshold must be in (0, 1], got 0" in output

    mine = write(tmp_path / "mine.yaml", {"negatives": {"num_negatives": 0}})
    code, output = build("--mine", str(mine))
    assert code == 2 and f"error: {mine}: mine.negatives.num_negatives: Input should be greater than or equal to 1" \
        in output
    code, output = build("--max-chars", "0")
    assert code == 2 and output.strip() == "error: --max-chars: Input should be greater than or equal to 1"
    code, output = build("--samples", "--raw-dir", str(tmp_path))
    assert code == 2 and output.startswith("error: choose one input: samples=true")
    code, output = build("--config", str(tmp_path / "absent.yaml"))
    assert code == 2 and output.startswith(f"error: cannot read {tmp_path / 'absent.yaml'}")
    assert runs == []


def test_the_flow_takes_build_params_and_validates_a_dict(tmp_path):
    [params] = build_m3e_hq.validate_parameters({"params": {"samples": True, "out_dir": str(tmp_path),
                                                            "publish": {"commercial_only": True}}}).values()
    assert params == BuildParams(samples=True, out_dir=tmp_path, publish={"commercial_only": True})
    with pytest.raises(ParameterTypeError, match="max_chars"):
        build_m3e_hq.validate_parameters({"params": {"max_chars": 0}})
    with pytest.raises(ParameterTypeError, match="unknown sources"):
        build_m3e_hq.validate_parameters({"params": {"sources": ["nope"]}})


def test_the_deployment_schema_is_build_params_and_prefect_yaml_fits_it():
    schema = parameter_schema(build_m3e_hq).model_dump_for_openapi()
    assert list(schema["properties"]) == ["params"]
    assert set(schema["definitions"]["BuildParams"]["properties"]) == set(BuildParams.model_fields)
    validate({"params": {"samples": True, "sources": ["ocnli"], "mine": {"encoder": "x"}}}, schema,
             raise_on_error=True)
    for params, message in [({"max_chars": 0}, "Validation failed for field 'params.max_chars'"),
                            ({"publish": {"commercial_only": "yes"}}, "'yes' is not of type 'boolean'"),
                            ({"sampels": True}, "'sampels' was unexpected")]:
        with pytest.raises(ValidationError, match=message):
            validate({"params": params}, schema, raise_on_error=True)
    [deployment] = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    validate(deployment["parameters"], schema, raise_on_error=True)
    assert BuildParams.model_validate(deployment["parameters"]["params"]) == BuildParams()


def test_the_deployment_schema_accepts_the_source_names_build_params_accepts():
    schema = parameter_schema(build_m3e_hq).model_dump_for_openapi()
    catalog = default_catalog()
    names = [n for s in catalog.sources for n in (s.name, *s.aliases)]
    given = [form for n in names for form in (n, n.lower(), n.upper(), n.swapcase(), n.title())]
    assert "bq" in given and "FIREFLY" in given and "chinese-squad" in given
    validate({"params": {"sources": given}}, schema, raise_on_error=True)
    assert BuildParams(sources=given).sources == [catalog.get(n).name for n in given]
    for wrong in ["nosuch", "bqq", "ocnli,lcqmc", " ocnli", "", "paws_x", "Chinese_SQuAD"]:
        with pytest.raises(ValidationError, match=r"field 'params.sources\[1\]'.*" + re.escape(repr(wrong))):
            validate({"params": {"sources": ["ocnli", wrong]}}, schema, raise_on_error=True)
        with pytest.raises(PydanticValidationError, match="unknown sources"):
            BuildParams(sources=["ocnli", wrong])
