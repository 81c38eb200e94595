"""Prompt learning on the text side (CoOp, Zhou et al. 2022, as PromptCLAP applies it to CLAP).

The words of the first zero-shot template before the class name ("This is a sound of")
become learnable context vectors shared by all classes; only they train (n_ctx × 768
numbers), through the model's frozen text encoder (LAION's RoBERTa, MS-CLAP's GPT-2) and text
projection. They start from the
template's own word embeddings, so the untrained prompts give exactly the zero-shot class
vectors. Recipe (CoOp's): SGD lr 0.002, momentum 0.9, weight decay 5e-4, cosine schedule
over the epochs after one warm-up epoch at lr 1e-5, batch 32, cross-entropy on the scaled
logits; 50 epochs at 1 shot, 100 at 2–4, 200 from 8 (`prompt_learning.epochs: coop`), no
validation. Padding is cut off the prompts: it is masked out of attention, RoBERTa's position
ids and GPT-2's pooling position are taken from the full token ids, so the text vectors are
unchanged and every step costs the prompt's length, not 77 tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.params import ParamError, get
from ..models.checkpoints import content_ids, prompt_start, text_features, tokenize, word_embeddings
from .base import Estimator, FoldData, register
from .tip_adapter import audio_and_zeroshot

LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.002, 0.9, 5e-4, 32
WARMUP_EPOCHS, WARMUP_LR = 1, 1e-5
def coop_epochs(shots: int) -> int:
    """CoOp's epochs for a k-shot training set (50 / 100 / 200)."""
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


class ContextPrompts(nn.Module):
    """Class prompts [ctx_1 … ctx_n] <class name tokens> <rest of template>, within the family's special
    tokens (LAION: <s> … </s>; MS-CLAP: … <|endoftext|>).

    The frozen text branch and projection are held by reference (not as submodules), so
    the module's parameters are the context vectors only."""

    def __init__(self, model, tok, classes: list[str], template: str):
        super().__init__()
        if "{label}" not in template:
            raise ParamError(f"params: 'zeroshot.templates' first template {template!r} has no '{{label}}' placeholder")
        prefix = template.split("{label}", 1)[0].rstrip()
        prefix_ids = content_ids(model, tok, prefix)
        if not prefix_ids:
            raise ParamError(f"params: 'zeroshot.templates' first template {template!r} has no words before the "
                             "class name; prompt learning learns those words")
        tokens = tokenize(model, tok, [template.format(label=c.replace("_", " ")) for c in classes])
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        n_ctx, start = len(prefix_ids), prompt_start(model)
        if not bool((ids[:, start:start + n_ctx] == torch.tensor(prefix_ids)).all()):
            raise ParamError(f"params: 'zeroshot.templates' first template {template!r}: the words before the class "
                             "name do not tokenize the same way in every class prompt")
        length = int(mask.sum(1).max())  # padding beyond the longest prompt is cut off (masked anyway)
        self.n_ctx, self.start = n_ctx, start
        self._frozen = (model, model.text_projection)
        words = word_embeddings(model)
        with torch.no_grad():
            self.register_buffer("token_embeds", words(ids[:, :length]).detach().clone())
            init = words.weight[torch.tensor(prefix_ids)].detach().clone()
        self.register_buffer("mask", mask[:, :length].clone())
        self.register_buffer("ids", ids.clone())  # the full ids: position ids and pooling position
        self.ctx = nn.Parameter(init)  # [n_ctx, 768]

    def forward(self) -> torch.Tensor:
        """Normalised joint-space class vectors [C, joint] for the current context."""
        model, projection = self._frozen
        c, a, b = len(self.token_embeds), self.start, self.start + self.n_ctx
        x = torch.cat([self.token_embeds[:, :a], self.ctx.unsqueeze(0).expand(c, -1, -1),
                       self.token_embeds[:, b:]], dim=1)
        out = text_features(model, self.ids[:, :x.shape[1]], self.mask, inputs_embeds=x)
        return F.normalize(projection(out), dim=-1)


@register
class PromptLearning(Estimator):
    """CoOp: learned context words of the first template; the text encoder stays frozen."""

    name = "prompt_learning"
    needs = frozenset({"text_encoder"})

    def __init__(self, epochs="coop"):
        self.epochs = epochs

    @classmethod
    def from_params(cls, params: dict) -> "PromptLearning":
        return cls(get(params, "prompt_learning.epochs"))

    def _epochs(self, labels: np.ndarray) -> int:
        if self.epochs != "coop":
            return int(self.epochs)
        counts = np.bincount(labels)
        return coop_epochs(int(counts[counts > 0].min()) if len(labels) else 0)

    def prompts(self, data: FoldData) -> ContextPrompts:
        """The untrained prompts of the dataset's classes (context = the template's own words)."""
        for key in ("model", "tokenizer"):
            if key not in data.context:
                raise RuntimeError(f"{self.name}: FoldData.context lacks '{key}' (the text encoder)")
        model = data.context["model"]
        model.eval()
        return ContextPrompts(model, data.context["tokenizer"], list(data.text.classes), data.text.templates[0])

    def fit(self, data: FoldData) -> "PromptLearning":
        prompts = self.prompts(data)
        idx = np.asarray(data.split.train)
        audio, _ = audio_and_zeroshot(data.text, data.store.embedding[idx])
        y = torch.as_tensor(data.labels[idx])
        scale = float(data.text.logit_scale)
        epochs = self._epochs(data.labels[idx])
        opt = torch.optim.SGD([prompts.ctx], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
        gen = torch.Generator().manual_seed(int(data.seed))
        history = []
        for epoch in range(1, epochs + 1):
            warm = epoch <= WARMUP_EPOCHS
            for group in opt.param_groups:  # CoOp's constant warm-up, then the cosine schedule
                group["lr"] = WARMUP_LR if warm else group["lr"]
            lr = opt.param_groups[0]["lr"]
            total = 0.0
            for b in torch.randperm(len(y), generator=gen).split(BATCH):
                loss = F.cross_entropy(scale * audio[b] @ prompts().T, y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            if warm:
                for group in opt.param_groups:
                    group["lr"] = LR
            else:
                cosine.step()
            history.append(dict(epoch=epoch, train_loss=total / max(1, len(y)), lr=lr))
        with torch.no_grad():
            self.class_embeddings_ = prompts().detach().clone()
        self.ctx_ = prompts.ctx.detach().clone()
        self.n_params_ = int(sum(p.numel() for p in prompts.parameters() if p.requires_grad))
        self.history_ = history
        return self

    def logits(self, data: FoldData, idx: np.ndarray) -> np.ndarray:
        self._check_fitted()
        audio, _ = audio_and_zeroshot(data.text, data.store.embedding[np.asarray(idx)])
        return (float(data.text.logit_scale) * audio @ self.class_embeddings_.T).numpy()

    def artefacts(self) -> dict[str, np.ndarray]:
        return {"ctx": self.ctx_.numpy(), "class_embeddings": self.class_embeddings_.numpy()}
