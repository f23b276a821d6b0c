"""Fit the ``guard`` judge's heads on the **build** part of the labelled set; the report part is never read.

    .venv/bin/python data/judge_validation/fit_guard.py            # writes src/.../judges/guard_heads.json

Choices made here by 5-fold cross-validation on the build part only: the encoder layer (of LAYERS), the L2
strength (of L2S) and each head's threshold (the one that maximises the out-of-fold kappa of that head). The
report part is scored afterwards, once, by ``safeneurons judge validate --judge guard``.
Features are cached in ``runs/guard-features-<layers>.npz`` (ignored by git) so a refit costs seconds."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from safeneurons.evaluate.agreement import cohen_kappa
from safeneurons.evaluate.judges.guard import (
    HEADS_FILE,
    EncoderSpec,
    GuardHeads,
    Head,
    balanced_weights,
    encode,
    fit_logistic,
)
from safeneurons.evaluate.judges.refusal import RefusalJudge
from safeneurons.evaluate.validation import DEFAULT_DIR, load_labelled
from safeneurons.models import load_model

ROOT = Path(__file__).resolve().parents[2]
LAYERS = (6, 9, 12, 15, 18, 21, 24)
L2S = (10.0, 100.0, 1000.0)
THRESHOLDS = tuple(np.round(np.arange(0.2, 0.81, 0.05), 2))
FOLDS = 5


def folds_of(ids: list[str]) -> np.ndarray:
    return np.array([int(hashlib.sha256(f"fold:{i}".encode()).hexdigest(), 16) % FOLDS for i in ids])


def best_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    scored = [(cohen_kappa(list(p >= t), list(y)) or -1.0, float(t)) for t in THRESHOLDS]
    k, t = max(scored)
    return t, k


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> np.ndarray:
    p = np.zeros(len(y))
    for f in range(FOLDS):
        tr, te = folds != f, folds == f
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        w, b = fit_logistic((x[tr] - mu) / sd, y[tr], l2, balanced_weights(y[tr]))
        p[te] = 1 / (1 + np.exp(-(((x[te] - mu) / sd) @ w + b)))
    return p


def _floats(v: np.ndarray) -> tuple[float, ...]:
    return tuple(float(f"{x:.7g}") for x in v)


def cached_features(cache: Path, lm: object, replies: list, spec: EncoderSpec) -> dict[int, np.ndarray]:
    """Features of every reply at every layer of LAYERS; rows already in ``cache`` (by id) are not recomputed."""
    have: dict[str, dict[int, np.ndarray]] = {}
    if cache.exists():
        z = np.load(cache)
        for k, rid in enumerate(z["ids"]):
            have[str(rid)] = {layer: z[f"l{layer}"][k] for layer in LAYERS}
    todo = [r for r in replies if r.id not in have]
    if todo:
        t0 = time.perf_counter()
        new = encode(lm.model, lm.tokenizer, [(r.prompt, r.response) for r in todo], spec, LAYERS)
        print(f"features: {time.perf_counter() - t0:.0f} s for {len(todo)} replies, all layers", flush=True)
        for k, r in enumerate(todo):
            have[r.id] = {layer: new[layer][k] for layer in LAYERS}
        cache.parent.mkdir(exist_ok=True)
        keys = sorted(have)
        np.savez(cache, ids=np.array(keys), **{f"l{layer}": np.stack([have[i][layer] for i in keys])
                                               for layer in LAYERS})
    return {layer: np.stack([have[r.id][layer] for r in replies]) for layer in LAYERS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=str(ROOT / DEFAULT_DIR))
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--out", default=str(ROOT / "src/safeneurons/evaluate/judges" / HEADS_FILE))
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--first", type=int, default=839, help=(
        "fit on the build items among the first N lines of items.jsonl (839: the shipped heads were fitted before "
        "the 2026-12-07 extension; 0: every build item)"))
    args = ap.parse_args()

    build = load_labelled(args.labels, part="build")
    if args.first:
        first = {json.loads(line)["id"] for line in
                 (Path(args.labels) / "items.jsonl").read_text(encoding="utf-8").splitlines()[: args.first]}
        build = [item for item in build if item.id in first]
    print(f"build part: {len(build)} replies", flush=True)
    spec = EncoderSpec(model=args.model, max_prompt_tokens=args.max_tokens, max_response_tokens=args.max_tokens)
    lm = load_model(args.model)
    cache = ROOT / "runs" / f"guard-features-{args.model}-{args.max_tokens}-{'-'.join(map(str, LAYERS))}.npz"
    ids = [r.id for r in build]
    feats = cached_features(cache, lm, build, spec)
    flags = np.array([[1.0 if v.label == "refusal" else 0.0]
                      for v in RefusalJudge().judge_many([r.item() for r in build])])
    y_ref = np.array([r.label == "refusal" for r in build])
    y_com = np.array([r.label == "compliance" for r in build])
    folds = folds_of(ids)

    grid = []
    for layer in LAYERS:
        x = np.concatenate([feats[layer], flags], axis=1)
        for l2 in L2S:
            t_r, k_r = best_threshold(out_of_fold(x, y_ref, folds, l2), y_ref)
            t_c, k_c = best_threshold(out_of_fold(x, y_com, folds, l2), y_com)
            grid.append((k_r + k_c, layer, l2, t_r, k_r, t_c, k_c))
            print(f"layer {layer:2d} l2 {l2:6g}: refusal κ {k_r:.3f} @ {t_r}, compliance κ {k_c:.3f} @ {t_c}",
                  flush=True)
    _, layer, l2, t_r, k_r, t_c, k_c = max(grid)
    print(f"chosen: layer {layer}, l2 {l2}, thresholds {t_r} / {t_c} (CV κ {k_r:.3f} / {k_c:.3f})")

    x = np.concatenate([feats[layer], flags], axis=1)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w_r, b_r = fit_logistic(z, y_ref, l2, balanced_weights(y_ref))
    w_c, b_c = fit_logistic(z, y_com, l2, balanced_weights(y_com))
    heads = GuardHeads(
        encoder=EncoderSpec(model=args.model, checksum=lm.checksum, layer=layer,
                            max_prompt_tokens=args.max_tokens, max_response_tokens=args.max_tokens),
        mean=_floats(mu), scale=_floats(sd), refusal=Head(_floats(w_r), b_r, t_r), comply=Head(_floats(w_c), b_c, t_c),
        fit={"labelled_set": "data/judge_validation", "part": "build", "n": len(build), "layers_tried": LAYERS,
             "l2_tried": L2S, "l2": l2, "cv_folds": FOLDS, "cv_kappa_refusal": round(k_r, 4),
             "cv_kappa_comply": round(k_c, 4), "command": " ".join(["python", *sys.argv])},
    )
    heads.save(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")
    print(json.dumps(heads.fit))


if __name__ == "__main__":
    main()
