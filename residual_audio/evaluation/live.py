"""Training curves logged with DVCLive while training, for `dvc plots show` / `dvc plots diff`.

One `Live` per dataset (dvclive/<dataset>/); each method and fold gets its own series,
`plots/metrics/<weights>-weights/<method>/<fold>/{train_loss,val_acc}.tsv` (the weights in the
path, so that every chart's title names them) with the epoch as DVCLive's step,
written as soon as that method and fold is fitted (the kept run, when a learning rate is chosen
from a grid). `live: false` in params.yaml turns it off.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

LIVE_DIR = Path("dvclive")
LOGGED = ("train_loss", "val_acc")


class TrainingLog:
    """`log(method, fold, row)` appends one epoch's numbers; a no-op when disabled."""

    def __init__(self, dataset: str, enabled: bool = True, root: str | Path = LIVE_DIR, weights: str = "random"):
        self.enabled, self.weights = enabled, weights
        self.dir = Path(root) / dataset
        self._live = None
        shutil.rmtree(self.dir, ignore_errors=True)  # curves of this run only
        if enabled:
            from dvclive import Live

            self._live = Live(dir=str(self.dir), dvcyaml=False, save_dvc_exp=False, report=None)
        (self.dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # the stage's declared output, empty when off

    def log(self, method: str, fold: str, row: dict) -> None:
        if self._live is None:
            return
        self._live.step = int(row["epoch"])
        for key in LOGGED:
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self._live.log_metric(f"{self.weights}-weights/{method}/{fold}/{key}", float(value))

    def callback(self, method: str, fold: str):
        """`on_epoch(row)` for `training.train`."""
        return lambda row: self.log(method, fold, row)

    def close(self) -> None:
        if self._live is not None:
            self._live.end()
            self._live = None


def enabled(params: dict) -> bool:
    from ..core.params import get

    return get(params, "live")
