"""DVC stage `train`: Train ResiDual's lambda on every fold."""

from residual_audio.experiment import train_stage
from residual_audio.params import load_params

if __name__ == "__main__":
    train_stage(load_params())
