"""DVC stage `bases`: Fit per-unit means and PCA bases on the training folds of every fold."""

from residual_audio.experiment import bases_stage
from residual_audio.params import load_params

if __name__ == "__main__":
    bases_stage(load_params())
