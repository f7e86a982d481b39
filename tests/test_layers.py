"""The package's layers import in one direction, stages share helpers only through the machinery, and the light
modules (catalog, filters, parameters, download) do not import torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a module may import its own layer and those before it.
LAYERS = ["m3e_hq", "m3e_hq.schemas", "m3e_hq.sources", "m3e_hq.flows.core", "m3e_hq.flows.stages",
          "m3e_hq.flows.pipeline", "m3e_hq.flows.cli"]
FOLDERS = {"m3e_hq": "m3e_hq", "schemas": "m3e_hq.schemas", "sources": "m3e_hq.sources", "flows": "m3e_hq.flows"}


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([FOLDERS[folder], *rest]).removesuffix(".__init__")


def layer(module: str) -> int:
    return max(i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + "."))


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("m3e_hq"):
            found |= {f"{node.module}.{a.name}" if node.module == "m3e_hq" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("m3e_hq")}
    return found


MODULES = {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))
           if "samples" not in p.parts}


def test_every_layer_imports_only_itself_and_the_layers_below():
    upward = [f"{name} imports {target}" for name, path in MODULES.items() for target in imports(path)
              if layer(target) > layer(name)]
    assert len(MODULES) > 40 and upward == []


def test_stages_import_no_other_stage():
    stages = {name for name in MODULES if name.startswith("m3e_hq.flows.stages.")}
    crossing = [f"{name} imports {target}" for name in stages for target in imports(MODULES[name])
                if target in stages and target != name]
    assert len(stages) >= 5 and crossing == []


def test_catalog_filters_parameters_and_download_import_without_torch():
    code = ("import sys; import m3e_hq.sources.catalog, m3e_hq.flows.stages.filters, m3e_hq.flows.pipeline.params, "
            "m3e_hq.flows.pipeline.download; "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'faiss') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert done.stdout.strip() == "[]"
