"""The wheel installs one top-level package, m3e_hq, with the catalog and every shipped sample as package data.
(.ci/wheel installs it in a fresh venv and builds the samples with it from an unrelated folder.)"""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_one_package_with_the_catalog_and_the_samples(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    [wheel] = tmp_path.glob("m3e_hq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"m3e_hq", wheel.name.split("-py3")[0] + ".dist-info"}
    samples = sorted(str(p.relative_to(ROOT / "data")) for p in (ROOT / "data" / "samples").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    assert "m3e_hq/sources/catalog.yaml" in names and len(samples) > 29
    assert [s for s in samples if f"m3e_hq/{s}" not in names] == []
    assert "m3e_hq/flows/core/stage.py" in names and "m3e_hq/flows/pipeline/build.py" in names
