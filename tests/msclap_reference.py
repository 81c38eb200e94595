"""msclap's own model code, loaded by path for the tests only (the package is installed without its
dependencies: `msclap/__init__.py` imports torchaudio, for which no release matches our torch, and
msclap pins transformers<5). Its model files need only torch, torchlibrosa and `transformers.AutoModel`,
whose `from_pretrained('gpt2')` is replaced here by a GPT-2 built from GPT-2's config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

NAME = "_msclap_reference_models"
REPO = Path(__file__).resolve().parents[1]


def package_dir() -> Path:
    spec = importlib.util.find_spec("msclap")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("msclap is not installed (the README's set-up installs it, without dependencies)")
    return Path(list(spec.submodule_search_locations)[0])


def models():
    """msclap.models (clap, audio, htsat, config), imported from its files under another name."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    directory = package_dir() / "models"
    spec = importlib.util.spec_from_file_location(NAME, directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)

    from transformers import GPT2Config, GPT2Model

    from residual_audio.models.msclap import GPT2

    class _AutoModel:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            assert name == "gpt2", name
            return GPT2Model(GPT2Config(**GPT2))

    module.clap.AutoModel = _AutoModel
    return module


def config_2023() -> dict:
    import yaml

    return yaml.safe_load((package_dir() / "configs" / "config_2023.yml").read_text())


def build_reference(seed: int = 0):
    """msclap's CLAP built from its config_2023.yml as CLAPWrapper.load_clap builds it, seeded random
    weights (every bias, norm and BatchNorm statistic perturbed), in eval()."""
    m, a = models(), config_2023()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clap = m.clap.CLAP(
            audioenc_name=a["audioenc_name"], sample_rate=a["sampling_rate"], window_size=a["window_size"],
            hop_size=a["hop_size"], mel_bins=a["mel_bins"], fmin=a["fmin"], fmax=a["fmax"],
            classes_num=a["num_classes"], out_emb=a["out_emb"], text_model=a["text_model"],
            transformer_embed_dim=a["transformer_embed_dim"], d_proj=a["d_proj"])
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for name, p in clap.named_parameters():
                if "extractor" not in name and (name.endswith("bias") or p.ndim == 1):
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
            bn = clap.audio_encoder.base.htsat.bn0
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 2 - 10)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) * 4 + 2)
            clap.logit_scale.add_(0.3)
    clap.eval()
    return clap


def save_official(clap, path) -> None:
    """msclap's file format: torch.save({'model': state_dict})."""
    torch.save({"model": clap.state_dict()}, path)


def wrapper(clap, tokenizer):
    """msclap's `CLAPWrapper` around `clap`, as `load_clap` leaves it, without running its __init__
    (which downloads the weights): `CLAPWrapper.py` loaded by path with `torchaudio` stubbed, whose
    `load` reads the file with soundfile (float32, as torchaudio's default normalisation) and whose
    `Resample` is refused (the tests feed clips at 44.1 kHz, which msclap does not resample).
    `tokenizer`: the GPT-2 tokenizer, given its pad token as load_clap does."""
    import types

    import soundfile as sf

    package = "_msclap_reference"
    if package + ".CLAPWrapper" not in sys.modules:
        directory = package_dir()
        if "torchaudio" not in sys.modules:
            stub = types.ModuleType("torchaudio")
            transforms = types.ModuleType("torchaudio.transforms")

            def load(path):
                data, sr = sf.read(str(path), dtype="float32", always_2d=True)
                return torch.from_numpy(data.T.copy()), sr

            class Resample:
                def __init__(self, *args, **kwargs):
                    raise AssertionError("the reference tests feed msclap clips at its own rate")

            stub.load, transforms.Resample, stub.transforms = load, Resample, transforms
            sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = stub, transforms
        spec = importlib.util.spec_from_file_location(package, directory / "__init__.py",
                                                      submodule_search_locations=[str(directory)])
        sys.modules[package] = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
        sys.modules[package + ".models"] = models()
        importlib.import_module(package + ".CLAPWrapper")
    cls = sys.modules[package + ".CLAPWrapper"].CLAPWrapper
    w = cls.__new__(cls)
    w.args = cls.read_config_as_args(w, (package_dir() / "configs" / "config_2023.yml").read_text(), is_config_str=True)
    w.token_keys = ["input_ids", "attention_mask"]
    w.use_cuda = False
    w.clap, w.tokenizer = clap, _EncodePlus(tokenizer)
    import re

    w.np_str_obj_array_pattern = re.compile(r"[SaUO]")
    w.default_collate_err_msg_format = "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {}"
    return w


class _EncodePlus:
    """transformers 4's `encode_plus(text=...)`, which msclap calls and transformers 5 dropped: the same
    as calling the tokenizer on one text."""

    def __init__(self, tok):
        self.tok = tok

    def encode_plus(self, text, **kwargs):
        return self.tok(text, **kwargs)
