"""DVC stage `baselines`: Zero-shot, linear probe and linear adapter on every fold."""

from residual_audio.experiment import baselines_stage
from residual_audio.params import load_params

if __name__ == "__main__":
    baselines_stage(load_params())
