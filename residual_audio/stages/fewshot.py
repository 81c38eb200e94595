"""Few-shot curves: every method fitted on k labelled clips per class, tested on the full test fold.

For each test fold of `cv.*` and each of `fewshot.seeds` seeds, k clips per class are drawn
(seeded) from the training folds only; methods that declare `"validation"` in their
`needs` also get a disjoint k-per-class validation draw, the others run with fixed
hyper-parameters. Draws are nested: with one permutation per class, fold and seed, the
fitting clips are its first k and the validation clips its last k, so the 2-shot set holds
the 1-shot set. Shot counts whose clips (with the validation draw) the training folds of
some fold cannot supply are skipped with one warning. The audio of every training-fold clip
(no labels) is offered as `FoldData.unlabelled`, for methods that fit bases without labels.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.io import atomic_path, write_json
from ..core.logs import progress
from ..core.resume import Resume
from ..core.params import ParamError, check, get
from ..data.paths import METRICS_DIR, PLOTS_DIR, RESULTS_DIR
from ..evaluation.protocol import Split
from ..evaluation.results import load_results
from ..evaluation.tasks import Classification, task_of
from ..evaluation.zeroshot import zeroshot_logits
from ..methods import REGISTRY, FoldData, build, check_names
from .common import ENCODER, VALIDATION, _store, _weights, method_context, result_environment, resume_inputs

FEWSHOT_PLOTS = PLOTS_DIR / "fewshot"


@dataclass(frozen=True)
class FewshotParams:
    shots: tuple
    seeds: int
    methods: tuple
    inject: bool
    seed: int
    scheme: str
    k: int
    variant: str | None = None  # model.variant: the model that methods needing an encoder build
    protocol: str = "within"  # fewshot.protocol
    val_fraction: float = 0.1  # cv.val_fraction: the validation share of the k under `within`

    @classmethod
    def read(cls, params: dict) -> "FewshotParams":
        methods = check_names(get(params, "fewshot.methods"), "fewshot.methods")
        return cls(tuple(sorted(get(params, "fewshot.shots"))), get(params, "fewshot.seeds"), tuple(methods),
                   get(params, "fewshot.inject"), get(params, "seed"), get(params, "cv.scheme"), get(params, "cv.k"),
                   get(params, "model.variant"), get(params, "fewshot.protocol"), get(params, "cv.val_fraction"))

    @property
    def oracle(self) -> bool:
        return self.protocol == "oracle"


# --------------------------------------------------------------------------- draws


def needs_validation(method: str) -> bool:
    return VALIDATION in REGISTRY[method].needs


def labels_seen(method: str, params: dict) -> dict:
    """What a k-shot run of `method` sees: `per_shot` labelled clips per class per shot (1 under the default
    `within` protocol; 2 under `oracle` for methods that select on validation: the k-shot draw and its k-shot
    validation draw) and whether it also reads the training folds' audio without labels (bases fitted on
    unlabelled clips)."""
    est = build(method, params)
    oracle = get(params, "fewshot.protocol") == "oracle"
    return {"per_shot": 2 if oracle and needs_validation(method) else 1,
            "unlabelled_audio": getattr(est, "bases_on", "fit") == "unlabelled"}


def validation_share(k: int, fraction: float) -> int:
    """Validation clips per class inside a k-shot draw (`within`): `fraction` of k, at least 1; none at k = 1."""
    return 0 if k < 2 else min(k - 1, max(1, int(round(fraction * k))))


def draw_within(perms: list[np.ndarray], k: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitting, validation) indices inside one k-shot draw: the first k of each class's permutation,
    its last `n_val` of them for validation."""
    fit = np.sort(np.concatenate([p[: k - n_val] for p in perms]))
    val = np.sort(np.concatenate([p[k - n_val : k] for p in perms])) if n_val else np.array([], dtype=np.int64)
    return fit, val


def feasible_shots(labels: np.ndarray, splits: list[Split], shots, with_val: bool) -> list[int]:
    """The shot counts every fold's training side can supply for every class (k, or 2k with
    the validation draw); the others are skipped with one warning."""
    fewest = min(int(np.bincount(labels[s.train_all], minlength=labels.max() + 1).min()) for s in splits)
    per = 2 if with_val else 1
    kept = [k for k in shots if per * k <= fewest]
    skipped = [k for k in shots if k not in kept]
    if skipped:
        warnings.warn(
            f"fewshot.shots {skipped} skipped: the training folds hold only {fewest} clips of the rarest class "
            f"(a {per}k-per-class draw{' with the validation draw' if with_val else ''} is needed)", stacklevel=2)
    if not kept:
        raise ParamError(f"params: 'fewshot.shots' {list(shots)}: no shot count fits the training folds "
                         f"({fewest} clips of the rarest class)")
    return kept


def class_permutations(labels: np.ndarray, pool: np.ndarray, seed) -> list[np.ndarray]:
    """One seeded permutation of the pool's clips of each class."""
    rng = np.random.default_rng(seed)
    pool = np.sort(np.asarray(pool))
    return [rng.permutation(pool[labels[pool] == c]) for c in np.unique(labels[pool])]


def draw(perms: list[np.ndarray], k: int, with_val: bool) -> tuple[np.ndarray, np.ndarray]:
    """(fitting, validation) indices: the first k of each class's permutation, and its last k."""
    fit = np.sort(np.concatenate([p[:k] for p in perms]))
    val = np.sort(np.concatenate([p[-k:] for p in perms])) if with_val else np.array([], dtype=np.int64)
    if with_val and any(len(p) < 2 * k for p in perms):
        raise ValueError(f"a {k}-shot draw with validation needs {2 * k} clips per class")
    return fit, val


# --------------------------------------------------------------------------- shared resources






# need -> builder(params, text, dataset, store) returning the FoldData.context entries it provides




# --------------------------------------------------------------------------- full-data results


def full_data_accuracy(path: Path, method: str, task=Classification()) -> tuple[float, float] | None:
    """(mean, std) over folds of a method's full-data test accuracy, from its results file
    (read by `evaluation.results.load_results`, checked); None if it is absent."""
    if not path.is_file():
        return None
    res = load_results(path)
    logits, fold_of, labels = res["logits"], res["fold_of"], res["labels"]
    tested = fold_of >= 0
    correct = task.correct(logits[tested], labels[tested])
    acc = np.array([correct[fold_of[tested] == f].mean() for f in np.unique(fold_of[tested])])
    return float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0


# --------------------------------------------------------------------------- the stage


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def run_grid(store, text, splits: list[Split], p: FewshotParams, params: dict, methods, context: dict | None = None,
             task=Classification(), resume: Resume | None = None):
    """Every method × fold × seed × shot count: a row per run (accuracy on the full test fold); with `resume`,
    the runs an earlier, stopped run finished are read back instead of fitted again."""
    with_val = p.oracle and any(needs_validation(m) for m in methods)
    shots = feasible_shots(store.label, splits, p.shots, with_val)
    context = {} if context is None else context
    rows = []
    runs = [(f, s, k) for f in range(len(splits)) for s in range(p.seeds) for k in shots]
    bar = progress(total=len(runs) * len(methods), desc="fewshot", unit="fits", boundary=True)
    for f, s, k in runs:
        split = splits[f]
        perms = class_permutations(store.label, split.train_all, (p.seed, f, s))
        drawn, oracle_val = draw(perms, k, with_val)
        for method in methods:
            if not needs_validation(method):
                fit, own_val = drawn, np.array([], dtype=np.int64)
            elif p.oracle:
                fit, own_val = drawn, oracle_val
            else:  # selection inside the k labels
                fit, own_val = draw_within(perms, k, validation_share(k, p.val_fraction))
            data = FoldData(store, text, Split(f"{split.name}/seed{s}/{k}shot", fit, own_val, split.test),
                            seed=p.seed + 1000 * s + f, unlabelled=split.train_all, context=context)
            bar.set_postfix_str(f"{split.name}, seed {s}, {k} shots: {method}")
            est = build(method, params)
            unit = {"method": method, "hyper": est.get_params(), "name": data.split.name,
                    "seed": data.seed, "fit": fit, "val": own_val, "test": split.test, "unlabelled": split.train_all}
            cached = resume.get(unit) if resume is not None else None
            if cached is not None:
                row = cached[1]
            else:
                est.fit(data)
                acc = task.accuracy(est.logits(data, split.test), store.label[split.test])
                row = dict(method=method, fold=split.name, seed=s, shots=k, accuracy=acc, params=int(est.n_params_))
                if resume is not None:
                    resume.put(unit, {}, row)
            bar.update(1)
            rows.append(row)
    bar.close()
    return rows, shots


def fewshot_dataset(params: dict, dataset: str, metrics_path: Path | None = None, plots_dir: Path | None = None) -> dict:
    """The few-shot grid on one dataset → metrics/<dataset>/fewshot.json and plots/fewshot/<dataset>/
    (curves.csv, runs.csv, notes.json, the figure). Returns the metrics."""
    import pandas as pd

    p = FewshotParams.read(params)
    metrics_path = METRICS_DIR / dataset / "fewshot.json" if metrics_path is None else metrics_path
    plots_dir = FEWSHOT_PLOTS / dataset if plots_dir is None else plots_dir
    methods = [m for m in p.methods if ENCODER not in REGISTRY[m].needs or p.inject]
    left = [m for m in p.methods if m not in methods]
    if left:
        warnings.warn(f"fewshot.methods {left} run the audio encoder every epoch: left out (set fewshot.inject: true)",
                      stacklevel=2)
    check(bool(methods), "fewshot.methods", "leaves no method to run")
    store = _store(dataset)
    task = task_of(dataset)
    text = task.text_side(dataset, store)
    weights = _weights(store, text)
    splits = task.splits(store, p, val_fraction=0.0, warn=False)  # `train` reports the folds
    with_val = p.oracle and any(needs_validation(m) for m in methods)
    feasible_shots(store.label, splits, p.shots, with_val)  # fail on impossible shots before any model is built
    context = method_context([REGISTRY[m] for m in methods], params, text, dataset, store, "fewshot.methods")
    resume = Resume("fewshot", dataset, {**resume_inputs(store, text, context), "weights": weights})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped shots were reported above
        rows, shots = run_grid(store, text, splits, p, params, methods, context, task, resume)
    if resume.reused:
        print(f"fewshot {dataset}: {resume.reused} of {len(rows)} fits reused from an unfinished run ({resume.dir})",
              file=sys.stderr)
    runs = pd.DataFrame(rows)

    zs = [task.accuracy(zeroshot_logits(store.embedding[s.test], text), store.label[s.test]) for s in splits]
    full_x = float(np.mean([len(s.train_all) / len(np.unique(store.label)) for s in splits]))
    curves, notes = [], []
    metrics = {"weights": weights, "protocol": p.protocol, "tuning": get(params, "tuning.mode"), "accuracy": {},
               "environment": result_environment(store, str(context.get("device", "cpu")))}
    for method in methods:
        per = runs[runs.method == method]
        metrics["accuracy"][method] = {}
        seen = labels_seen(method, params)
        for k in shots:
            acc = per[per.shots == k].accuracy
            st = _stats(acc)
            # the labels it saw per class (k, or 2k with the validation draw), and unlabelled training audio
            metrics["accuracy"][method][str(k)] = {**st, "labels_per_class": seen["per_shot"] * k,
                                                   "unlabelled_audio": seen["unlabelled_audio"]}
            curves.append(dict(dataset=dataset, method=method, point=str(k), shots=float(k), accuracy_mean=st["mean"],
                               accuracy_std=st["std"], runs=len(acc), params=int(per[per.shots == k].params.max()),
                               weights=weights, labels_per_class=seen["per_shot"] * k,
                               unlabelled_audio=seen["unlabelled_audio"]))
        full = full_data_accuracy(RESULTS_DIR / dataset / f"{method}.npz", method, task)
        if full is None:
            notes.append(f"{method}: no full-data results at {RESULTS_DIR / dataset / f'{method}.npz'}; point skipped")
            continue
        curves.append(dict(dataset=dataset, method=method, point="full", shots=full_x, accuracy_mean=full[0],
                           accuracy_std=full[1], runs=len(splits), params=-1, weights=weights))
    st = _stats(zs)
    curves.append(dict(dataset=dataset, method="zeroshot_reference", point="all", shots=float("nan"),
                       accuracy_mean=st["mean"], accuracy_std=st["std"], runs=len(splits), params=0, weights=weights))
    curves = pd.DataFrame(curves)
    for note in notes:
        print(f"fewshot: {note}")

    with atomic_path(plots_dir) as tmp:
        tmp.mkdir(parents=True)
        curves.to_csv(tmp / "curves.csv", index=False, float_format="%.6g")
        runs.assign(dataset=dataset, weights=weights).to_csv(tmp / "runs.csv", index=False, float_format="%.6g")
        (tmp / "notes.json").write_text(json.dumps({"full_data": notes}, indent=2) + "\n")
        figure(curves, dataset, weights, tmp / "curves.png")
    write_json(metrics_path, metrics)
    resume.finish()
    return metrics


def _labels_note(shots) -> str:
    """'; 2k labels', '; + unlabelled audio': what a method's k-shot points saw beyond k labels per class."""
    if "labels_per_class" not in shots or not len(shots):
        return ""
    note = "; 2k labels" if (shots.labels_per_class > shots.shots).any() else ""
    return note + ("; + unlabelled audio" if shots.unlabelled_audio.astype(bool).any() else "")


def figure(curves, dataset: str, weights: str, path: Path) -> None:
    """Accuracy against shots (log scale), one line per method, the full-data point at the
    right (dashed), the zero-shot level as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = curves[curves.method == "zeroshot_reference"]
    for i, (method, part) in enumerate((m, g) for m, g in curves.groupby("method", sort=False) if m != "zeroshot_reference"):
        color = f"C{i % 10}"
        shots = part[part.point != "full"].sort_values("shots")
        counts = sorted(set(shots.params))
        n_params = f"{counts[0]} params" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} params"
        ax.errorbar(shots.shots, shots.accuracy_mean, yerr=shots.accuracy_std, marker="o", ms=4, capsize=2,
                    color=color, label=f"{method} ({n_params}{_labels_note(shots)})")
        full = part[part.point == "full"]
        if len(full) and len(shots):
            ax.plot([shots.shots.iloc[-1], full.shots.iloc[0]], [shots.accuracy_mean.iloc[-1], full.accuracy_mean.iloc[0]],
                    ls="--", color=color, lw=1)
            ax.errorbar(full.shots, full.accuracy_mean, yerr=full.accuracy_std, marker="s", color=color, capsize=2)
    if len(ref):
        ax.axhline(float(ref.accuracy_mean.iloc[0]), color="k", ls=":", lw=1.2, label="zero-shot")
    ax.set_xscale("log", base=2)
    ticks = sorted(curves.loc[curves.point.str.isnumeric(), "shots"].unique())
    full_x = curves.loc[curves.point == "full", "shots"]
    labels = [str(int(t)) for t in ticks]
    if len(full_x):
        ticks, labels = ticks + [float(full_x.iloc[0])], labels + [f"full (~{full_x.iloc[0]:.0f})"]
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlabel("labelled clips per class")
    ax.set_ylabel("test accuracy (mean ± std over folds × seeds)")
    ax.set_title(f"{dataset}: few-shot accuracy ({weights} weights)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(params: dict, dataset: str) -> str:
    """DVC stage `fewshot` on one dataset of `datasets`."""
    fewshot_dataset(params, dataset)
    return str(METRICS_DIR / dataset / "fewshot.json")
