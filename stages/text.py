"""DVC stage `text`: Cache class vectors, temperature and the frozen audio projection of the dataset."""

from residual_audio.experiment import text_stage
from residual_audio.params import load_params

if __name__ == "__main__":
    text_stage(load_params())
