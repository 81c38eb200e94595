"""`residual-audio predict <bundle> <audio>...`: label new audio files with an exported method.

Each file goes the way the pipeline's clips went: decoded, resampled to the model's rate, padded or
cropped as the export's dataset was (`crop`), turned into a log-mel by the model's own front end, then
one forward with the direct decomposition (the units, the constant and the pooled embedding). The
method's restored state then scores it against the exported classes. The model must be the one the
bundle was made from: the same family, variant, checkpoint sha256, units and front end. Anything
else is refused in one line naming the bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import logs
from ..core.io import sha256_file
from ..data.units import UnitStore
from ..evaluation.protocol import Split
from ..methods import REGISTRY, FoldData
from ..models.checkpoints import front_end, identity_file, load_model
from ..models.decompose import unit_names
from ..stages.extract import HeadExtractor
from ..stages.preprocess import load_wave
from .bundle import Bundle, BundleError, read_bundle


def checkpoint_identity(checkpoint) -> str:
    return "random" if str(checkpoint) == "random" else sha256_file(identity_file(checkpoint))


def check_model(bundle: Bundle, path: Path, checkpoint, model, front) -> None:
    m = bundle.meta
    ident = checkpoint_identity(checkpoint)
    if ident != m["checkpoint"]:
        raise BundleError(f"{path}: made for the weights {m['checkpoint'][:16]} ({m['family']}, {m['weights']}), but "
                          f"{checkpoint} is {ident[:16]}; export again from this model, or pass its checkpoint "
                          f"with --checkpoint")
    family, variant = getattr(model, "family", "laion"), getattr(model, "variant", None)
    if (family, variant) != (m["family"], m["variant"]):
        raise BundleError(f"{path}: made for {m['family']} HTSAT-{m['variant']}, but the model is {family} "
                          f"HTSAT-{variant} (model.variant)")
    if front.fingerprint() != m["front_end"]["mel_sha256"]:
        raise BundleError(f"{path}: made with another log-mel front end than {checkpoint}'s")


def predict(bundle_path, files, checkpoint, batch_size: int = 8) -> tuple[list[str], np.ndarray]:
    """(classes, logits [n_files, n_classes]) of the exported method on `files`."""
    bundle_path = Path(bundle_path)
    bundle = read_bundle(bundle_path)
    m = bundle.meta
    if m["method"] not in REGISTRY or not REGISTRY[m["method"]].exportable:
        raise BundleError(f"{bundle_path}: method {m['method']!r} is not one this version can apply")
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("predict: no audio files given")
    model = load_model(checkpoint, m["variant"])
    front = front_end(checkpoint, m["variant"] or "tiny")
    check_model(bundle, bundle_path, checkpoint, model, front)
    extractor = HeadExtractor(model, regimes=("direct",))
    names = unit_names(extractor.arch)
    if names != m["unit_names"]:
        raise BundleError(f"{bundle_path}: its units are not this model's ({len(m['unit_names'])} against {len(names)})")
    try:
        est = REGISTRY[m["method"]].from_hyper(m["hyper"]).restore(bundle.state, bundle.text)
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{bundle_path}: its {m['method']} state does not restore ({exc})") from None
    parts = {"units": [], "const": [], "embedding": []}
    fe = m["front_end"]
    bar = logs.progress(total=len(files), desc="predict", unit="clips")
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        waves = np.stack([load_wave(f, front.audio_rate, front.clip_samples, front.quantize, front.fill, fe["crop"],
                                    fe["loader"], fe["min_seconds"])[0] for f in batch])
        with torch.no_grad():
            out = extractor(front(torch.from_numpy(waves)))
        parts["units"].append(out["direct/units"].numpy())
        parts["const"].append(out["direct/const"].numpy())
        parts["embedding"].append(out["embedding"].numpy())
        bar.update(len(batch))
    bar.close()
    n = len(files)
    store = UnitStore(path=bundle_path, units=np.concatenate(parts["units"]).astype(np.float32),
                      const=np.concatenate(parts["const"]).astype(np.float32),
                      embedding=np.concatenate(parts["embedding"]).astype(np.float32),
                      label=np.zeros(n, np.int64), fold=np.zeros(n, np.int64), unit_names=names,
                      classes=list(m["classes"]), weights=m["weights"], variant=m["variant"] or "tiny")
    idx = np.arange(n)
    empty = np.array([], np.int64)
    logits = est.logits(FoldData(store, bundle.text, Split("predict", empty, empty, idx)), idx)
    return list(m["classes"]), np.asarray(logits, np.float64)


def table(files, classes, logits, top: int = 3) -> list[dict]:
    """One row per file: the label, its softmax score and the next ones."""
    z = logits - logits.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    rows = []
    for f, p in zip(files, prob):
        order = np.argsort(-p)[:top]
        rows.append({"path": str(f), "label": classes[order[0]], "score": float(p[order[0]]),
                     "top": "; ".join(f"{classes[i]} {p[i]:.3f}" for i in order),
                     **{f"p({c})": float(p[i]) for i, c in enumerate(classes)}})
    return rows
