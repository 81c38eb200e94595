"""The `geometry` stage: intrinsic dimension and statistics of every head of every dataset -> plots/geometry/, metrics/geometry.json."""

from __future__ import annotations

from pathlib import Path

from ..analysis import geometry
from ..analysis.geometry import open_store
from ..data.paths import HEADS_DIR, PLOTS_DIR


def config_from_params(params: dict, heads_dir: str | Path = HEADS_DIR) -> dict:
    """The `geometry:` block of params.yaml (checked by the schema) and the heads stores it needs, as
    keyword arguments for `run`; a dataset without a heads store, or too few clips for `mle_k`, is refused."""
    from ..core.params import ParamError, check, dataset_names, get

    datasets = dataset_names(params)
    paths = [Path(heads_dir) / f"{name}.zarr" for name in datasets]
    for name, path in zip(datasets, paths):
        if not path.exists():
            raise ParamError(f"params: 'datasets' names '{name}', but its heads store {path} does not exist (run the extract stage for it)")

    stores = [open_store(path) for path in paths]

    regimes = get(params, "geometry.regimes")
    mle_k = get(params, "geometry.mle_k")
    for store in stores:
        check(store.n_clips > mle_k + 1, "geometry.mle_k",
              f"= {mle_k} needs more than {mle_k + 1} clips, but {store.path} has {store.n_clips}")  # fmt: skip
    discard = get(params, "geometry.twonn_discard")
    rtol = get(params, "geometry.duplicate_rtol")
    return {
        "store_paths": paths,
        "regimes": list(regimes),
        "mle_k": int(mle_k),
        "twonn_discard": float(discard),
        "duplicate_rtol": float(rtol),
    }


def run(params: dict, heads_dir: str | Path = HEADS_DIR, out_dir: str | Path = PLOTS_DIR / "geometry",
          metrics_path: str | Path = "metrics/geometry.json") -> dict:
    """The `geometry` stage: tables, figures and metrics for every dataset in `datasets`
    (with two or more, the cross-dataset tables too)."""
    summary = geometry.run(out_dir=out_dir, metrics_path=metrics_path, **config_from_params(params, heads_dir))
    print(f"geometry: {', '.join(summary['datasets'])} (weights: {summary['weights']}) -> {out_dir}, {metrics_path}")
    return summary
