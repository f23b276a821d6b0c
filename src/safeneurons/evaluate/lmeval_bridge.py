"""Run lm-evaluation-harness on the in-memory model, with neuron interventions active throughout.

The model is never copied or reloaded: ``lm_eval.models.huggingface.HFLM(pretrained=model,
tokenizer=tokenizer)`` wraps the very ``PreTrainedModel`` object, so hooks registered by
:func:`safeneurons.intervene.intervene` (or weights edited by ``edited_weights``) are what lm-eval
evaluates. ``lm_eval`` is an optional dependency (``pip install 'safeneurons[lmeval]'``), imported
only when :func:`run_lm_eval` is called. Checked against lm-eval 0.4.13 (``simple_evaluate``,
``HFLM``, ``TaskManager(include_path=...)``).

Paper settings (both need the task data on the Hugging Face Hub, or a local task YAML):

- TruthfulQA MC1/MC2 (0-shot; lm-eval's task prompt already holds six QA examples)::

      run_lm_eval(model, tok, ["truthfulqa_mc1", "truthfulqa_mc2"], interventions=neurons)
      # results["results"]["truthfulqa_mc1"]["acc,none"], results["results"]["truthfulqa_mc2"]["acc,none"]

- ARC-Challenge 25-shot (Open LLM Leaderboard setting; report ``acc_norm``)::

      run_lm_eval(model, tok, ["arc_challenge"], num_fewshot=25, interventions=neurons)
      # results["results"]["arc_challenge"]["acc_norm,none"]

- Offline, a task YAML in a folder passed as ``include_path`` can read local files with
  ``dataset_path: json`` and ``dataset_kwargs: {data_files: {validation: /path/file.jsonl}}``;
  :func:`write_local_arc_task` writes one for the local ARC-Challenge validation file (ARC 25-shot
  offline, few-shot examples from the validation split minus the question)::

      run_lm_eval(model, tok, ["arc_challenge_local"], num_fewshot=25,
                  include_path=write_local_arc_task(tmp_dir), interventions=neurons)

  TruthfulQA is not in the local datasets folder; it needs the Hub (or its datasets cache) once.

Use ``limit=`` for quick checks only (lm-eval then warns that the figures are not comparable).
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from safeneurons.errors import ConfigError, DataError, SafeneuronsError

if TYPE_CHECKING:
    from safeneurons.intervene.hooks import Intervention
    from safeneurons.neurons import NeuronSet

logger = logging.getLogger("safeneurons.evaluate")

INSTALL_HINT = "pip install 'safeneurons[lmeval]'"


def _import_lm_eval() -> tuple[Any, Any, Any]:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise SafeneuronsError(
            f"run_lm_eval needs lm-evaluation-harness, which is not installed or failed to import ({exc}); "
            f"install it with {INSTALL_HINT}."
        ) from None
    return lm_eval, HFLM, TaskManager


_OFFLINE_ERRORS = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError", "ConnectionError"}


def _is_offline_error(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if any(t.__name__ in _OFFLINE_ERRORS for t in type(exc).__mro__):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def make_hflm(model: Any, tokenizer: Any, *, batch_size: int | str = 8, max_length: int | None = None,
              **hflm_kwargs: Any) -> Any:
    """An ``HFLM`` around the in-memory ``model`` (no reload; ``device`` is the model's own)."""
    _, HFLM, _ = _import_lm_eval()
    kwargs: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size}
    if max_length is not None:
        kwargs["max_length"] = max_length
    kwargs.update(hflm_kwargs)
    return HFLM(**kwargs)


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str] | str, *,
                interventions: "Sequence[Intervention] | Intervention | NeuronSet | None" = None,
                num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int | str = 8,
                include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                task_manager: Any = None, apply_chat_template: bool | str = False,
                log_samples: bool = False, bootstrap_iters: int = 1000, max_length: int | None = None,
                hflm_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluate ``model`` (with ``interventions`` active for the whole run) on lm-eval ``tasks``.

    Returns lm-eval's results dictionary (``"results"``, ``"configs"``, ``"versions"``, ``"n-shot"``,
    ``"config"``... and ``"samples"`` when ``log_samples``), plus ``"safeneurons"`` with the
    interventions' fingerprint and descriptions. ``include_path`` adds a folder of task YAMLs (local
    tasks); ``kwargs`` go to ``lm_eval.simple_evaluate`` (e.g. ``gen_kwargs``, ``fewshot_random_seed``).
    ``bootstrap_iters`` defaults to 1000 (lm-eval's 100000 is slow on CPU; 0 skips stderr)."""
    lm_eval, _, TaskManager = _import_lm_eval()
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ConfigError("run_lm_eval(tasks=...) is empty; name at least one lm-eval task (e.g. arc_challenge).")
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)
                                    or num_fewshot < 0):
        raise ConfigError(f"num_fewshot = {num_fewshot!r} is invalid: expected an integer >= 0 or None.")
    if task_manager is not None and include_path is not None:
        raise ConfigError("pass either task_manager or include_path to run_lm_eval, not both.")
    if task_manager is None:
        paths = None
        if include_path is not None:
            paths = ([str(include_path)] if isinstance(include_path, (str, os.PathLike))
                     else [str(p) for p in include_path])
            for p in paths:
                if not os.path.isdir(p):
                    raise ConfigError(f"include_path {p} is not a directory of lm-eval task YAML files.")
        task_manager = TaskManager(include_path=paths)
    unknown = [t for t in names if t not in task_manager.all_tasks and not os.path.isfile(t) and "*" not in t]
    if unknown:
        raise ConfigError(
            f"lm-eval knows no task(s) {', '.join(map(repr, unknown))}; check the name with "
            "`lm_eval ls tasks`, or pass include_path= pointing at a folder with your task YAML."
        )

    from safeneurons.intervene.hooks import as_interventions, fingerprint, intervene

    ivs = as_interventions(interventions) if interventions is not None else []
    lm = make_hflm(model, tokenizer, batch_size=batch_size, max_length=max_length, **(hflm_kwargs or {}))
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with (intervene(model, ivs) if ivs else nullcontext([])) as descriptions:
            results = lm_eval.simple_evaluate(
                model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=task_manager,
                apply_chat_template=apply_chat_template, log_samples=log_samples,
                bootstrap_iters=bootstrap_iters, batch_size=batch_size, **kwargs,
            )
    except Exception as exc:
        if _is_offline_error(exc):
            raise DataError(
                f"lm-eval could not fetch the data of task(s) {', '.join(names)} from the Hugging Face Hub "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Run once online so the "
                "datasets cache holds it, or write a task YAML with `dataset_path: json` and "
                "`dataset_kwargs: {data_files: ...}` in a folder passed as include_path."
            ) from exc
        raise
    finally:
        if was_training:
            model.train()
    if results is None:  # non-zero rank under distributed launchers
        return {}
    results = dict(results)
    results["safeneurons"] = {"interventions": list(descriptions), "fingerprint": fingerprint(ivs) if ivs else "none"}
    return results


_LOCAL_ARC_YAML = """\
# Written by safeneurons.evaluate.lmeval_bridge.write_local_arc_task: lm-eval's arc_challenge prompt and
# metrics on the local ARC-Challenge validation file. Few-shot examples come from the same split with the
# evaluated question excluded (lm-eval excludes the eval doc when fewshot_split == test_split); the
# upstream task draws them from the train split, which the local datasets folder does not have.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
{cache}output_type: multiple_choice
test_split: validation
fewshot_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_local_arc_task(out_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
                         task: str = "arc_challenge_local",
                         cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``<out_dir>/<task>.yaml``: lm-eval's ``arc_challenge`` on the local (sha256-checked) validation
    file, so the 25-shot paper setting runs offline::

        tasks = write_local_arc_task(tmp)
        run_lm_eval(model, tok, ["arc_challenge_local"], num_fewshot=25, include_path=tasks)

    ``cache_dir`` is where the ``datasets`` library keeps its Arrow copy (default: its own cache).
    Returns ``out_dir``."""
    from safeneurons.data.datasets import dataset_file
    from safeneurons.io import write_text_atomic

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", task):
        raise ConfigError(f"task name {task!r} must be letters, digits, '_' or '-'.")
    data = dataset_file("arc_challenge/arc_challenge_validation.jsonl", data_dir).resolve()
    cache = f"  cache_dir: {json.dumps(str(Path(cache_dir).resolve()))}\n" if cache_dir is not None else ""
    out = Path(out_dir)
    write_text_atomic(out / f"{task}.yaml",
                      _LOCAL_ARC_YAML.format(task=task, data=json.dumps(str(data)), cache=cache))
    return out


def summarize(results: dict[str, Any], metrics: Sequence[str] = ("acc", "acc_norm", "exact_match")) -> dict[str, dict[str, float]]:
    """``{task: {metric: value, metric_stderr: value}}`` from lm-eval results (filter suffix ``",none"`` dropped)."""
    out: dict[str, dict[str, float]] = {}
    for task, vals in (results.get("results") or {}).items():
        row: dict[str, float] = {}
        for key, value in vals.items():
            name, _, _flt = key.partition(",")
            base = name[:-len("_stderr")] if name.endswith("_stderr") else name
            if base in metrics and isinstance(value, (int, float)):
                row[name] = float(value)
        if row:
            out[task] = row
    return out


__all__ = ["INSTALL_HINT", "make_hflm", "run_lm_eval", "summarize", "write_local_arc_task"]
