"""``safeneurons monitor fit`` / ``monitor score`` / ``monitor evaluate``: a safety-neuron monitor
(:mod:`safeneurons.evaluate.monitor`) and its evaluation against alternatives (:mod:`safeneurons.pipelines.monitor_eval`).

``cli/main.py`` adds the ``monitor`` group with ``register(app)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from safeneurons.cli import reference as _reference
from safeneurons.cli.common import (
    ConfigOpt,
    ModelOpt,
    OutOpt,
    QuietOpt,
    ReuseOpt,
    SetOpt,
    SplitOpt,
    echo,
    explicit,
    friendly_errors,
    setup_logging,
)
from safeneurons.errors import ConfigError

if TYPE_CHECKING:
    from safeneurons.evaluate.monitor import Monitor

monitor_app = typer.Typer(help="Safety-neuron monitor: fit a readout of a neuron set's activations on harmful and "
                               "benign prompts; score prompts with it.", no_args_is_help=True)


def _fmt_thresholds(monitor: Monitor) -> str:
    stats = monitor.info.get("threshold_stats", {})
    parts = []
    for rate, t in sorted(monitor.thresholds.items()):
        s = stats.get(repr(rate), {})
        parts.append(f"FPR {rate:g}: threshold {t:.4g} (held-out FPR {s.get('realised_fpr', float('nan')):.3f}, "
                     f"TPR {s.get('tpr_held_out', float('nan')):.3f})")
    return "; ".join(parts)


@monitor_app.command("fit", epilog=_reference.epilog("monitor fit"))
@friendly_errors
def fit_cmd(
    out: Annotated[str, typer.Option("--out", "-o", help="monitor folder to write (monitor.json + "
                                                       "monitor.safetensors)")],
    neurons: Annotated[str | None, typer.Option("--neurons", help="neuron set JSON (sets neurons)")] = None,
    model: ModelOpt = None,
    harmful: Annotated[str | None, typer.Option("--harmful", help="harmful prompts: dataset or file")] = None,
    harmless: Annotated[str | None, typer.Option("--harmless", help="benign prompts: dataset or file")] = None,
    n: Annotated[int | None, typer.Option("--n", help="prompts per group (sets fit.n)")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
) -> None:
    """Fit a monitor: L2 logistic readout of the neuron set's last-prompt-token activations, with thresholds
    for the requested false-positive rates chosen on held-out benign prompts."""
    from safeneurons.cli.common import load_run_config
    from safeneurons.pipelines.monitor import MonitorFitRunConfig, run_monitor_fit

    setup_logging(quiet)
    options = explicit(**{"model.spec": model, "neurons": neurons, "harmful": harmful, "harmless": harmless,
                          "fit.n": n})
    cfg = load_run_config(MonitorFitRunConfig, config, set_, options)
    monitor, path = run_monitor_fit(cfg, out)
    held = monitor.info["held_out"]
    ns, name = monitor.neurons, monitor.info["model"].get("name")
    echo(f"monitor of {len(ns)} neurons ({ns.name}) on {name}: held-out AUC {held['auc']:.3f} "
         f"({held['n_harmful']} harmful, {held['n_harmless']} benign); {_fmt_thresholds(monitor)}")
    echo(f"written to {path}")


@monitor_app.command("score")
@friendly_errors
def score_cmd(
    monitor_dir: Annotated[str, typer.Option("--monitor", help="monitor folder (from monitor fit)")],
    prompts: Annotated[str, typer.Option("--prompts", help="prompts to score: dataset name or file")],
    fpr: Annotated[float, typer.Option("--fpr", help="flag at the monitor's threshold for this false-positive "
                                                     "rate (one of those fitted)")] = 0.01,
    model: Annotated[str | None, typer.Option("--model", "-m", help="model (default: the one the monitor was "
                                                                    "fitted on); other weights are refused")] = None,
    n: Annotated[int | None, typer.Option("--n", help="score only this many prompts (seeded sample)")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="datasets folder")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="also write one JSON line per prompt "
                                                               "(index, score, flagged, prompt) to this file")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="prompts per forward pass")] = 8,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (default: best available)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Score prompts with a monitor: one line per prompt (score, flag at --fpr, prompt), then the count flagged."""
    from safeneurons.data import load_prompts
    from safeneurons.evaluate.monitor import Monitor
    from safeneurons.io import write_text_atomic
    from safeneurons.models import load_model

    setup_logging(quiet)
    if n is not None and n < 1:
        raise ConfigError(f"--n {n}: expected at least 1.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected at least 1.")
    monitor = Monitor.load(monitor_dir)
    threshold = monitor.threshold(fpr)
    spec = model or monitor.info.get("model", {}).get("spec")
    if not spec:
        raise ConfigError(f"{monitor_dir}: the monitor names no model spec; pass --model.")
    ps = load_prompts(prompts, data_dir=data_dir, limit=n)
    lm = load_model(spec, device=device)
    monitor.check_model(lm.model, lm.checksum, source=str(Path(monitor_dir)))
    scores = monitor.score(lm.model, lm.tokenizer, ps.texts(), batch_size=batch_size)
    rows = [{"index": i, "score": float(s), "flagged": bool(s > threshold), "prompt": p}
            for i, (s, p) in enumerate(zip(scores, ps.texts()))]
    for r in rows:
        text = " ".join(r["prompt"].split())
        echo(f"{r['score']:.4f}  {'FLAG' if r['flagged'] else 'ok  '}  {text[:100]}")
    k = sum(r["flagged"] for r in rows)
    echo(f"flagged {k} of {len(rows)} prompts ({ps.name}) at FPR {fpr:g} (threshold {threshold:.4g})")
    if out:
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        echo(f"scores written to {out}")


@monitor_app.command("evaluate", epilog=_reference.epilog("monitor evaluate"))
@friendly_errors
def evaluate_cmd(
    neurons: Annotated[str | None, typer.Option("--neurons", help="folder of neuron sets, e.g. "
                                                                  "docs/results/demo-0.5b/neurons (sets neurons)")] = None,
    model: ModelOpt = None,
    attack_set: Annotated[str | None, typer.Option("--attack-set", help="NeuronSet JSON zeroed for the PRUNED "
                                                                        "condition (sets attack_set)")] = None,
    trained_model: Annotated[str | None, typer.Option("--trained-model", help="another model of the same shape "
                                                                              "(sets trained_model)")] = None,
    report: Annotated[bool, typer.Option(help="write report.html at the end")] = True,
    config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, split: SplitOpt = None,
    reuse: ReuseOpt = None, quiet: QuietOpt = False,
) -> None:
    """Evaluate the monitor against real alternatives on held-out prompts: monitors on FULL / ES / SAS, matched
    random sets, a residual-stream probe and the model's own refusal (AUROC, TPR at fixed FPR, false alarms on
    XSTest, MultiJail); with --attack-set / --trained-model, whether it survives the attack."""
    from safeneurons import runformat as rf
    from safeneurons.cli.common import load_scoring_config, run_dir_for
    from safeneurons.pipelines.monitor_eval import COMMAND, MonitorEvalConfig, run_monitor_eval

    setup_logging(quiet)
    options = explicit(**{"model.spec": model, "neurons": neurons, "attack_set": attack_set,
                          "trained_model": trained_model})
    cfg = load_scoring_config(MonitorEvalConfig, config, set_, options, split, "split")
    path = run_monitor_eval(cfg, run_dir_for(COMMAND, out, reuse), progress=not quiet)
    echo((path / rf.ME_RESULT_MD).read_text(encoding="utf-8"))
    if report:
        from safeneurons.report import build_report

        echo(f"report: {build_report(path)}")
    else:
        echo(f"run directory: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
