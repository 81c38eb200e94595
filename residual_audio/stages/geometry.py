"""The `geometry` stage: intrinsic dimension and statistics of every head of every dataset -> plots/geometry/, metrics/geometry.json."""

from __future__ import annotations

from pathlib import Path

from ..analysis import geometry
from ..analysis.geometry import REGIMES, open_store


def config_from_params(params: dict, heads_dir: str | Path = "data/heads") -> dict:
    """Validate the `geometry:` block of params.yaml; return keyword arguments for `run`."""
    from ..core.params import ParamError, check, dataset_names, get

    datasets = dataset_names(params)
    paths = [Path(heads_dir) / f"{name}.zarr" for name in datasets]
    for name, path in zip(datasets, paths):
        if not path.exists():
            raise ParamError(f"params: 'datasets' names '{name}', but its heads store {path} does not exist (run the extract stage for it)")

    stores = [open_store(path) for path in paths]

    regimes = get(params, "geometry.regimes", list(REGIMES))
    check(isinstance(regimes, list) and len(regimes) > 0, "geometry.regimes", f"must be a non-empty list out of {list(REGIMES)}")
    unknown = [r for r in regimes if r not in REGIMES]
    check(not unknown, "geometry.regimes", f"has unknown regime(s) {unknown}; choose from {list(REGIMES)}")
    check(len(set(regimes)) == len(regimes), "geometry.regimes", "lists a regime twice")

    mle_k = get(params, "geometry.mle_k", 20)
    check(isinstance(mle_k, int) and not isinstance(mle_k, bool) and 3 <= mle_k <= 200, "geometry.mle_k",
          f"must be an integer in [3, 200], got {mle_k!r}")  # fmt: skip
    for store in stores:
        check(store.n_clips > mle_k + 1, "geometry.mle_k",
              f"= {mle_k} needs more than {mle_k + 1} clips, but {store.path} has {store.n_clips}")  # fmt: skip
    discard = get(params, "geometry.twonn_discard", 0.1)
    check(isinstance(discard, (int, float)) and not isinstance(discard, bool) and 0.0 <= discard <= 0.5,
          "geometry.twonn_discard", f"must be a fraction in [0, 0.5], got {discard!r}")  # fmt: skip
    rtol = get(params, "geometry.duplicate_rtol", 1e-6)
    check(isinstance(rtol, (int, float)) and not isinstance(rtol, bool) and 0.0 < rtol <= 1e-2,
          "geometry.duplicate_rtol", f"must lie in (0, 0.01], got {rtol!r}")  # fmt: skip
    return {
        "store_paths": paths,
        "regimes": list(regimes),
        "mle_k": int(mle_k),
        "twonn_discard": float(discard),
        "duplicate_rtol": float(rtol),
    }


def run(params: dict, heads_dir: str | Path = "data/heads", out_dir: str | Path = "plots/geometry",
          metrics_path: str | Path = "metrics/geometry.json") -> dict:
    """The `geometry` stage: tables, figures and metrics for every dataset in `datasets`
    (with two or more, the cross-dataset tables too)."""
    summary = geometry.run(out_dir=out_dir, metrics_path=metrics_path, **config_from_params(params, heads_dir))
    print(f"geometry: {', '.join(summary['datasets'])} (weights: {summary['weights']}) -> {out_dir}, {metrics_path}")
    return summary
