"""The `text` stage: the zero-shot class vectors, temperature and frozen audio projection of one dataset -> data/text/<dataset>.npz."""

from __future__ import annotations

from ..core.io import sha256_file
from ..core.params import ParamError, get
from ..data.heads import HeadsStore
from ..data.paths import HEADS_DIR, MODELS_DIR, TEXT_DIR
from ..evaluation.zeroshot import build_text_side, save_text_side
from ..models.checkpoints import identity_file, load_model, load_tokenizer, own_tokenizer, resolve_checkpoint


def run(params: dict, dataset: str) -> None:
    """Class vectors, temperature and frozen audio projection per dataset → data/text/<dataset>.npz."""

    datasets = [dataset]
    checkpoint = str(get(params, "model.checkpoint"))
    variant = get(params, "model.variant")
    tokenizer = get(params, "model.tokenizer")
    templates = get(params, "zeroshot.templates")
    random = checkpoint.strip().lower() == "random"
    checkpoint_file = resolve_checkpoint(checkpoint, MODELS_DIR)  # what the model stage placed
    own = own_tokenizer(checkpoint_file)  # a ClapModel folder's own files, if it has them
    if own is None and (tokenizer is None or not str(tokenizer).strip()):
        raise ParamError(
            "params: 'model.tokenizer' is empty: the zero-shot class vectors need the model's tokenizer "
            f"(vocab.json + merges.txt){', with random weights too' if checkpoint.strip().lower() == 'random' else ''}"
        )
    classes = {}
    for ds in datasets:
        classes[ds] = HeadsStore.open(HEADS_DIR / f"{ds}.zarr").classes
    model = load_model(checkpoint_file, variant)
    tok = load_tokenizer(model, own or MODELS_DIR / "tokenizer")
    templates = None if templates == "auto" else templates  # None: the family's own prompt
    sha = "" if random else sha256_file(identity_file(checkpoint_file))
    sides = {ds: build_text_side(model, tok, classes[ds], templates, sha) for ds in datasets}
    for ds, side in sides.items():
        save_text_side(TEXT_DIR / f"{ds}.npz", side)
