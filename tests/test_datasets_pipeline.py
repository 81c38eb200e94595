"""Several datasets in one `dvc repro`: per-dataset stages run once per name in `datasets` (DVC
foreach), the cross-dataset outputs (method × dataset table, geometry comparison) are built
from every dataset's results, and a change to one dataset's inputs re-runs only its stages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("esc50", "folder")
STAGES = ("train", "evaluate", "compare", "geometry")


def _store(root: Path, name: str, seed: int) -> None:
    import zarr

    from residual_audio.data.synthetic import synthetic_store
    from residual_audio.evaluation.zeroshot import save_text_side

    text, _ = synthetic_store(root / f"data/heads/{name}.zarr", n_per_class=4, n_classes=5, seed=seed)
    zarr.open_group(str(root / f"data/heads/{name}.zarr"), mode="a").attrs["dataset"] = name
    save_text_side(root / f"data/text/{name}.npz", text)


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for name in ("residual_audio", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in STAGES}
    pipeline.pop("plots", None)
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(datasets=list(DATASETS), methods=["zeroshot", "residual_fine"], live=False)
    params["cv"].update(scheme="stratified", k=2)
    params["residual"]["recipes"]["fine"]["max_epochs"] = 2
    params["geometry"].update(regimes=["pre"], mle_k=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for seed, name in enumerate(DATASETS):
        _store(root, name, seed)
        (root / f"data/mel/{name}.zarr").mkdir(parents=True)  # read only by methods that run the encoder
        (root / f"data/mel/{name}.zarr/README").write_text("not read by these methods\n")
    (root / "data/models").mkdir(parents=True)
    (root / "data/models/manifest.json").write_text('{"weights": "random"}\n')
    return root


def _run(root: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_two_datasets_in_one_repro_and_per_dataset_reruns(tmp_path):
    root = _project(tmp_path)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"], ["git", "config", "user.name", "t"],
                [sys.executable, "-m", "dvc", "init", "-q"]):
        _run(root, *cmd)
    dvc = [sys.executable, "-m", "dvc"]
    listed = _run(root, *dvc, "stage", "list")
    assert all(f"{stage}@{ds}" in listed for stage in ("train", "evaluate") for ds in DATASETS)
    _run(root, *dvc, "repro")

    table = pd.read_csv(root / "plots/comparison.csv")
    assert set(table.dataset) == set(DATASETS) and set(table.method) == {"zeroshot", "residual_fine"}
    markdown = (root / "metrics/comparison.md").read_text()
    assert "| method | esc50 | folder |" in markdown
    cross = pd.read_csv(root / "plots/geometry/cross_dataset.csv")
    assert set(cross.dataset) == set(DATASETS) and 3 in set(cross.stage)  # the layer-3 means per dataset
    assert (root / "metrics/esc50/alignment.json").is_file() and (root / "metrics/folder/alignment.json").is_file()

    # a new heads store for one dataset: only that dataset's stages and the cross-dataset ones re-run
    _store(root, "folder", seed=7)
    log = _run(root, *dvc, "repro")
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    skipped = {line.split("'")[1] for line in log.splitlines() if "didn't change, skipping" in line}
    assert {"train@folder", "evaluate@folder", "compare", "geometry"} <= ran, log
    assert {"train@esc50", "evaluate@esc50"} <= skipped and not ran & {"train@esc50", "evaluate@esc50"}, log


def test_per_dataset_stages_depend_only_on_their_dataset():
    """Statically: a foreach stage's dataset-specific params and data deps all name `${item}`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, spec in stages.items():
        if "foreach" not in spec:
            continue
        assert spec["foreach"] == "${datasets}", name
        body = spec["do"]
        assert "${item}" in body["cmd"], name
        for key in body.get("params", []):
            assert key != "datasets", f"{name}: adding a dataset would re-run every dataset's {name}"
            assert not key.startswith("data.") or "${item}" in key, f"{name}: param {key} is not per dataset"
        for dep in body.get("deps", []):
            if dep.startswith("data/") and dep != "data/models":
                assert "${item}" in dep, f"{name}: dep {dep} is not per dataset"
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots") for o in body.get(key, [])]
        assert outs and all("${item}" in o for o in outs), f"{name}: an output is shared by every dataset"
