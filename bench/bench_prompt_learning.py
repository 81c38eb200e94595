"""Prompt learning (CoOp) on CPU: seconds per training step and per epoch for 50 classes.

Every step runs the frozen RoBERTa forward and backward on the 50 class prompts (ESC-50's
class names in the first template) for one batch of 32 clips; an epoch at k shots is
ceil(50 k / 32) steps. Side by side: the prompts cut after their last token (as trained)
against the same prompts padded to LAION's 77 tokens. The last table extrapolates CoOp's
schedule (50 / 100 / 200 epochs) to one run per shot count and to the default grid
(5 folds × 3 seeds × 1, 2, 4, 8, 16 shots).
Run: PYTHONPATH=. python bench/bench_prompt_learning.py [--tokenizer DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from residual_audio.methods.prompt_learning import BATCH, ContextPrompts, coop_epochs
from residual_audio.models.laion import build_model, load_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def esc50_classes(meta: Path) -> list[str]:
    with open(meta) as f:
        rows = {int(r["target"]): r["category"] for r in csv.DictReader(f)}
    return [rows[i] for i in sorted(rows)]


def step_seconds(prompts: ContextPrompts, steps: int, scale: float = 14.3) -> float:
    """Seconds per optimiser step (forward + backward through the text encoder, SGD update)."""
    opt = torch.optim.SGD([prompts.ctx], lr=0.002, momentum=0.9)
    audio = F.normalize(torch.randn(BATCH, 512), dim=-1)
    y = torch.randint(0, len(prompts.token_embeds), (BATCH,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(scale * audio @ prompts().T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=str(SHARED / "roberta-base"))
    ap.add_argument("--classes", default=str(SHARED / "esc50-fold4" / "meta" / "esc50.csv"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    classes = esc50_classes(Path(args.classes))
    model = build_model("tiny", seed=0)
    tok = load_tokenizer(args.tokenizer)
    prompts = ContextPrompts(model, tok, classes, "This is a sound of {label}.")
    cut = step_seconds(prompts, args.steps)
    length = prompts.token_embeds.shape[1]
    padded = ContextPrompts(model, tok, classes, "This is a sound of {label}.")
    full = padded.token_embeds.new_zeros(len(classes), 77, 768)
    with torch.no_grad():
        from residual_audio.models.laion import tokenize

        tokens = tokenize(tok, [f"This is a sound of {c.replace('_', ' ')}." for c in classes])
        full = model.text_branch.embeddings.word_embeddings(tokens["input_ids"])
    padded.token_embeds, padded.mask, padded.ids = full, tokens["attention_mask"], tokens["input_ids"]
    pad = step_seconds(padded, args.steps)
    print(f"{len(classes)} classes, {args.threads} threads, batch {BATCH}, n_ctx {prompts.n_ctx} "
          f"({prompts.ctx.numel()} parameters)")
    print(f"step, prompts cut to {length} tokens: {cut:.3f} s; padded to 77: {pad:.3f} s ({pad / cut:.1f}x)")
    print("| shots | steps/epoch | s/epoch | CoOp epochs | s per run |")
    print("| --- | --- | --- | --- | --- |")
    grid = 0.0
    for k in (1, 2, 4, 8, 16):
        steps = math.ceil(len(classes) * k / BATCH)
        run = steps * cut * coop_epochs(k)
        grid += 15 * run
        print(f"| {k} | {steps} | {steps * cut:.2f} | {coop_epochs(k)} | {run:.0f} |")
    print(f"default grid (5 folds x 3 seeds x 5 shot counts): {grid / 3600:.1f} h")


if __name__ == "__main__":
    main()
