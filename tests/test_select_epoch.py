"""`select_from_epoch`: the untrained state (epoch 0) is recorded but never kept unless asked, as in the
released ResiDual code, whose checkpoint callbacks first evaluate after epoch 1."""

from __future__ import annotations

import pytest
import torch

from residual_audio.methods.training import TrainConfig, train


class Scale(torch.nn.Module):
    """Logits x · w: starts right on the validation clips; training on flipped labels makes it worse."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(2))

    def forward(self, x):
        return x @ self.w


def _data():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 8)
    y = torch.tensor([0, 1] * 8)
    return x, y


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_epoch_zero_is_recorded_but_not_kept_by_default(monitor):
    x, y = _data()
    cfg = TrainConfig(max_epochs=3, lr=0.5, patience=5, batch_size=4, monitor=monitor, warmup_epochs=0)
    for select, kept in ((1, lambda e: e >= 1), (0, lambda e: e == 0)):
        model = Scale()
        history, _ = train(model, (x,), 1 - y, (x,), y, TrainConfig(**{**cfg.__dict__, "select_from_epoch": select}))
        best = [r["epoch"] for r in history if r["best"]]
        assert len(best) == 1 and kept(best[0]), (select, history)
        assert history[0]["epoch"] == 0 and history[0]["val_acc"] == 1.0  # the untrained state, recorded
        if select == 1:
            assert not torch.equal(model.w.detach(), torch.eye(2))  # a trained state was restored
        else:
            assert torch.equal(model.w.detach(), torch.eye(2))


def test_no_epochs_keeps_the_untrained_model():
    x, y = _data()
    model = Scale()
    history, _ = train(model, (x,), y, (x,), y, TrainConfig(max_epochs=0, select_from_epoch=1))
    assert [r["epoch"] for r in history] == [0] and torch.equal(model.w.detach(), torch.eye(2))


def test_the_recipes_defaults_follow_the_released_code():
    from residual_audio.methods.residual.maths import RECIPES

    assert {n: r.select_from_epoch for n, r in RECIPES.items()} == {"coarse": 1, "fine": 1, "full": 1, "identity": 0}
