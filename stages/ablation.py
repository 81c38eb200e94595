"""DVC stage `ablation`: Mean-ablation of each head and block, and its correlation with the Fisher score."""

from residual_audio.experiment import ablation_stage
from residual_audio.params import load_params

if __name__ == "__main__":
    ablation_stage(load_params())
