"""How far an ``objective: align`` expansion moved prompts along the refusal direction (analysis of a run).

For a finished ``safeneurons multilingual`` run with ``expansion.objective: align``, this rebuilds the refusal
directions the run trained against (English identification rows vs D_norm, with the layers and prompt
rendering of the run's ``expansion.align`` settings), projects the last prompt token of the original and the expanded
model onto them, and prints, in separations ``‖r_ℓ‖`` averaged over the layers: the projection in the
original model and its change after training, for the XSTest prompts scored for over-refusal (all of them,
those only the expanded model refuses, those the original refuses), the benign training anchors, and the
English harmful identification rows. Not part of ``run_all.py``; docs/results.md §5e cites its output.

    .venv/bin/python benchmarks/align_shift.py RUN [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a multilingual run directory with expansion/main/model")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()

    from safeneurons.config import load_config
    from safeneurons.io import write_json_atomic
    from safeneurons.models import load_model
    from safeneurons.pipelines.common import over_refusal_prompts
    from safeneurons.pipelines.multilingual import MultilingualConfig, _benign_prompts, _norm_prompts, split_rows
    from safeneurons.train.align import AlignConfig, alignment_layers, alignment_residuals, refusal_directions
    from safeneurons.train.dpo import load_weights

    run = args.run
    stored = yaml.safe_load((run / "config.yaml").read_text()) or {}
    earlier = [] if "split" in stored else ["split=all"]  # a run before evaluation splits scored every row
    cfg = load_config(MultilingualConfig, str(run / "config.yaml"), earlier)
    lm = load_model(cfg.model.spec, dtype=cfg.model.dtype)
    ident, _ = split_rows(cfg)
    align = AlignConfig.from_dict(cfg.expansion.align)
    layers = alignment_layers(lm.model, align)

    def residuals(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
        return alignment_residuals(model, lm.tokenizer, texts, layers, align)

    dirs = refusal_directions(residuals(lm.model, ident["en"].texts()), residuals(lm.model, _norm_prompts(cfg).texts()),
                              layers)
    trained = copy.deepcopy(lm.model)
    load_weights(trained, run / "expansion" / "main" / "model")
    trained.eval()

    _, scored = over_refusal_prompts(cfg.expansion.over_refusal_n, cfg.data_dir, cfg.seed, cfg.split)
    ids = [p.id for p in scored.prompts]

    def refused(name: str) -> list[bool]:
        verdicts = json.loads((run / "multilingual" / "over_refusal" / f"{name}.json").read_text())["verdicts"]
        by_id = {v["id"]: v["label"] == "refusal" for v in verdicts}
        return [by_id[i] for i in ids]

    before, after = refused("original"), refused("expanded")
    groups = {"xstest_scored": scored.texts(), "benign_anchors": _benign_prompts(cfg), "harmful_en": ident["en"].texts()}
    out: dict[str, dict[str, float | int]] = {}
    for name, texts in groups.items():
        p0 = (dirs.project(residuals(lm.model, texts)) / dirs.separation).mean(1)
        shift = (dirs.project(residuals(trained, texts)) / dirs.separation).mean(1) - p0
        subsets = {name: list(range(len(texts)))}
        if name == "xstest_scored":
            subsets["xstest_only_expanded_refuses"] = [i for i in range(len(ids)) if after[i] and not before[i]]
            subsets["xstest_original_refuses"] = [i for i in range(len(ids)) if before[i]]
        for sub, idx in subsets.items():
            if idx:
                out[sub] = {"n": len(idx), "projection_original": p0[idx].mean().item(),
                            "shift_mean": shift[idx].mean().item(), "shift_median": shift[idx].median().item()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
