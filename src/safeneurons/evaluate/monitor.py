"""A safety-neuron monitor: a linear readout of a neuron set's activations at the last prompt token.

**Features.** For a prompt, ``x ∈ ℝᴺ`` holds the activations of the ``N`` neurons of a
:class:`~safeneurons.neurons.NeuronSet` at the last prompt token (the token before the answer: chat template
with a generation prompt by default, as in :mod:`safeneurons.stats`), in the set's iteration order (layer,
then site, then index). They are standardised with the training prompts' mean ``μ`` and standard deviation
``σ`` (``σ = 1`` for a neuron that does not vary): ``z = (x - μ) / σ``.

**Readout.** L2-regularised logistic regression,

.. math:: p(\\text{harmful} \\mid x) = σ(w·z + b), \\qquad
          (w, b) = \\arg\\min \\sum_i c_i \\log\\bigl(1 + e^{-y_i (w·z_i + b)}\\bigr) + \\tfrac{λ}{2} \\lVert w \\rVert^2,

``y ∈ {-1, +1}``, class weights ``c_i`` that give both groups the same total weight, the bias not penalised,
solved with L-BFGS (:func:`safeneurons.evaluate.judges.guard.fit_logistic`, shared with the guard judge). Why
this readout: the log-loss is a proper scoring rule, so ``σ(w·z + b)`` estimates a probability (for a
balanced prior) rather than an arbitrary margin, and every threshold on it is a point of one ROC curve; a
threshold per false-positive rate is then read off held-out benign scores (:func:`threshold_for_fpr`). The
penalty keeps the weights finite when the groups are separable (which they often are) and spreads weight
over correlated neurons; standardising first makes the one penalty ``λ`` treat neurons of every layer and
scale alike. A linear readout costs one dot product per prompt, so it can ride along with generation
(:func:`guarded_generate`), and its weights say which neurons it reads.

**Decisions.** A prompt is *flagged* when its score is strictly above the threshold. :func:`threshold_for_fpr`
chooses, on held-out benign scores, the threshold with the largest realised false-positive rate that does
not exceed the one requested (ties handled exactly, see there); :func:`fit_monitor` stores one per
requested rate (default 1 % and 5 %) and the held-out TPR at each.

**Files.** :meth:`Monitor.save` writes a folder with ``monitor.json`` (format ``safeneurons.monitor/1``: the
model's weights checksum and shape, the neuron set itself with its fingerprint and size, the prompt
rendering, the thresholds with their realised rates, the held-out summary, the fit settings and data
hashes, and the sha256 of the tensor file) and ``monitor.safetensors`` (float64 ``mean``, ``scale``,
``weight``, ``bias`` and int64 ``layer``, ``site`` (index into :data:`~safeneurons.neurons.SITES`) and
``index`` of each feature). :meth:`Monitor.load` refuses a pair whose checksums disagree, a model whose
weights checksum differs from the one fitted on, a model or neuron set of another shape, and a different
neuron set, each in one line naming the file.

**Guarded generation.** :func:`guarded_generate` scores each prompt from the prefill that generation runs
anyway: hooks keep the set's activations at the last input position of the first forward pass of each
batch (:class:`PrefillCapture`), a stopping criterion scores the batch right after that pass and ends the
flagged rows there, and the flagged prompts get the refusal text instead of their generation.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from safeneurons.config import require, to_dict
from safeneurons.data.prompts import Prompt, PromptSet
from safeneurons.errors import ConfigError, DataError
from safeneurons.evaluate.features import Cell, cells_of, model_device, prompt_features, site_order
from safeneurons.evaluate.generate import Generation, GenerationConfig, _run_batches, prompt_list
from safeneurons.evaluate.readouts import LinearReadout, fit_readout
from safeneurons.evaluate.roc import realised_fpr, roc_auc, threshold_for_fpr, tpr_at_fpr
from safeneurons.io import (
    atomic_path,
    package_version,
    read_json,
    read_safetensors,
    sha256_file,
    sha256_text,
    write_json_atomic,
)
from safeneurons.models.hooks import site_hooks
from safeneurons.models.layout import model_layout
from safeneurons.neurons import ModelShape, NeuronSet
from safeneurons.stats.encode import render_prompt

if TYPE_CHECKING:
    from safeneurons.intervene.hooks import Intervention

log = logging.getLogger("safeneurons.evaluate")

FORMAT = "safeneurons.monitor/1"
JSON_FILE = "monitor.json"
TENSOR_FILE = "monitor.safetensors"
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."
# keys of monitor.json that Monitor fields make; every other key is kept in Monitor.info as it is
_STRUCTURE = ("format", "model", "neuron_set", "features", "encoding", "readout", "thresholds", "tensors",
              "safeneurons_version")


# -- settings -----------------------------------------------------------------------------------------------


@dataclass
class MonitorConfig:
    """How :func:`fit_monitor` fits a monitor."""

    n: int | None = field(default=None, metadata={
        "help": "prompts per group (harmful, benign) sampled with seed before the split; null: all"})
    held_out: float = field(default=0.3, metadata={
        "help": "share of each group held out of the fit, in (0, 1): thresholds are chosen on the held-out "
                "benign prompts, and AUC / TPR are reported on both held-out groups"})
    l2: float = field(default=1.0, metadata={
        "help": "L2 penalty λ on the readout weights (> 0; loss summed over prompts + λ/2 ‖w‖²)"})
    fprs: tuple[float, ...] = field(default=(0.01, 0.05), metadata={
        "help": "false-positive rates in [0, 1) to store a threshold for (on held-out benign prompts)"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt sample and the train / held-out split"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass"})
    chat_template: bool = field(default=True, metadata={
        "help": "render prompts with the tokenizer's chat template (guarded generation must match)"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message of the chat template (guarded generation must match)"})
    max_length: int = field(default=512, metadata={"help": "longest prompt in tokens (longer: its end is kept)"})

    def __post_init__(self) -> None:
        require("fit.n", self.n, self.n is None or (isinstance(self.n, int) and self.n >= 4),
                "an integer >= 4 or null (all)")
        require("fit.held_out", self.held_out, 0 < self.held_out < 1, "a share in (0, 1)")
        require("fit.l2", self.l2, self.l2 > 0, "a number > 0")
        self.fprs = tuple(float(f) for f in self.fprs)
        require("fit.fprs", list(self.fprs), bool(self.fprs) and all(0 <= f < 1 for f in self.fprs),
                "one or more rates in [0, 1)")
        require("fit.seed", self.seed, self.seed >= 0, "an integer >= 0")
        require("fit.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        require("fit.max_length", self.max_length, self.max_length >= 1, "an integer >= 1")


# -- activations --------------------------------------------------------------------------------------------


def neuron_activations(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], neurons: NeuronSet, *,
                       chat_template: bool = True, system_prompt: str | None = None, max_length: int = 512,
                       batch_size: int = 8) -> np.ndarray:
    """``[len(prompts), len(neurons)]`` float64: each neuron's activation at each prompt's last prompt token
    (features in the set's iteration order). Decoder only, right padding, length-sorted batches; the pass
    stops once the deepest layer of the set has been read (:func:`safeneurons.evaluate.features.prompt_features`)."""
    return prompt_features(model, tokenizer, prompts, neurons, chat_template=chat_template,
                           system_prompt=system_prompt, max_length=max_length, batch_size=batch_size).neurons


class PrefillCapture:
    """Hooks that keep a neuron set's activations at the last input position of the first forward pass after
    each :meth:`reset`, and ignore every later pass (the decoding steps of ``generate``). With left padding
    that position is every row's last prompt token. Hooks are attached only inside :meth:`attached`.

    >>> cap = PrefillCapture(model, monitor.neurons)            # doctest: +SKIP
    >>> with cap.attached():
    ...     cap.reset(); model.generate(**batch); x = cap.features()
    """

    def __init__(self, model: torch.nn.Module, neurons: NeuronSet) -> None:
        self.layout = model_layout(model)
        self.cells = cells_of(self.layout, neurons, model_device(model))
        self.n_features = len(neurons)
        self._got: dict[int, torch.Tensor] = {}

    def _hook(self, i: int, cell: Cell) -> Any:
        got = self._got

        def keep(x: torch.Tensor) -> None:
            if i not in got:
                got[i] = x[:, -1].index_select(-1, cell.cols)

        return keep

    @contextmanager
    def attached(self) -> Iterator[PrefillCapture]:
        with site_hooks(self.layout, [(c.layer, c.site, self._hook(i, c)) for i, c in enumerate(self.cells)]):
            yield self

    def reset(self) -> None:
        self._got.clear()

    @property
    def ready(self) -> bool:
        return len(self._got) == len(self.cells)

    def features(self) -> np.ndarray:
        """``[batch, n_features]`` float64 from the captured pass."""
        if not self.ready:
            raise RuntimeError("PrefillCapture.features: no forward pass has run since reset().")
        return torch.cat([self._got[i] for i in range(len(self.cells))], dim=-1).double().cpu().numpy()


# -- the monitor --------------------------------------------------------------------------------------------


def neuron_fingerprint(neurons: NeuronSet) -> str:
    """``sha256:`` of the set's neurons as canonical JSON (its name and provenance left out)."""
    return "sha256:" + sha256_text(json.dumps(neurons.to_dict()["neurons"], sort_keys=True))


@dataclass
class Monitor:
    """A fitted readout over ``neurons`` (see the module text): ``score = σ(w·(x - mean)/scale + b)``."""

    neurons: NeuronSet
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    thresholds: dict[float, float] = field(default_factory=dict)
    model_checksum: str = ""
    model_shape: ModelShape | None = None
    chat_template: bool = True
    system_prompt: str | None = None
    max_length: int = 512
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, neurons: NeuronSet, readout: LinearReadout, **kwargs: Any) -> Monitor:
        """The monitor over ``neurons`` whose readout is ``readout`` (fitted on their activations in the set's
        iteration order); ``kwargs``: the other fields (model checksum and shape, prompt rendering, ...)."""
        return cls(neurons, readout.mean, readout.scale, readout.weight, readout.bias, **kwargs)

    def __post_init__(self) -> None:
        n = len(self.neurons)
        for name in ("mean", "scale", "weight"):
            value = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if value.size != n:
                raise DataError(f"monitor {name} has {value.size} entries for {n} neurons.")
            setattr(self, name, value)
        self.bias = float(self.bias)
        self.model_shape = self.model_shape or self.neurons.shape

    # scoring --------------------------------------------------------------------------------------------
    def logits(self, activations: np.ndarray) -> np.ndarray:
        """``w·z + b`` for raw activation rows ``[n, len(neurons)]``."""
        x = np.asarray(activations, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.weight.size:
            raise DataError(f"monitor reads {self.weight.size} neurons; got activations of shape {x.shape}.")
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def probabilities(self, activations: np.ndarray) -> np.ndarray:
        """``σ(logits)``: the score, an estimate of P(harmful) for a balanced prior."""
        from scipy.special import expit

        return expit(self.logits(activations))

    def threshold(self, fpr: float) -> float:
        """The stored threshold for false-positive rate ``fpr`` (one of those fitted)."""
        for rate, t in self.thresholds.items():
            if math.isclose(rate, float(fpr), rel_tol=0, abs_tol=1e-12):
                return t
        have = ", ".join(f"{r:g}" for r in sorted(self.thresholds)) or "none"
        raise ConfigError(f"the monitor has no threshold for FPR {fpr:g} (it has: {have}); refit with "
                          "fprs including it, or pass a threshold.")

    def check_model(self, model: torch.nn.Module, model_checksum: str | None = None, source: str = "") -> None:
        """Refuse a model of another shape, or (``model_checksum`` given) other weights than fitted on."""
        self._check(model_layout(model).shape(), model_checksum, source)

    def _check(self, shape: ModelShape | None, model_checksum: str | None, source: str) -> None:
        where = source or "monitor"
        mine = self.model_shape or self.neurons.shape
        if shape is not None and not mine.compatible(shape):
            raise ConfigError(
                f"{where}: fitted for a {mine.n_layers}-layer model with {dict(mine.site_sizes)} neurons per layer; "
                f"this model has {shape.n_layers} layers and {dict(shape.site_sizes)}. Fit a monitor for it.")
        if model_checksum is not None and self.model_checksum and model_checksum != self.model_checksum:
            raise ConfigError(
                f"{where}: fitted on model weights {self.model_checksum[:23]}… "
                f"({self.info.get('model', {}).get('name') or '?'}), but the model given has "
                f"{model_checksum[:23] + '…' if model_checksum else 'no checksum'}; refit the monitor on this model "
                "(safeneurons monitor fit) or load the weights it names.")
        if model_checksum is not None and not self.model_checksum:
            log.warning("%s names no model checksum: cannot check it was fitted on these weights.", where)

    def check_neurons(self, neurons: NeuronSet, source: str = "") -> None:
        """Refuse a neuron set of another model shape, or other neurons than the monitor reads."""
        where = source or "monitor"
        if not self.neurons.shape.compatible(neurons.shape):
            a, b = self.neurons.shape, neurons.shape
            raise ConfigError(
                f"{where}: reads a neuron set of a {a.n_layers}-layer model ({dict(a.site_sizes)} per layer); "
                f"neuron set {neurons.name!r} is for {b.n_layers} layers ({dict(b.site_sizes)}).")
        if neuron_fingerprint(neurons) != neuron_fingerprint(self.neurons):
            raise ConfigError(
                f"{where}: reads neuron set {self.neurons.name!r} ({len(self.neurons)} neurons, "
                f"{neuron_fingerprint(self.neurons)[:19]}…), not {neurons.name!r} ({len(neurons)} neurons, "
                f"{neuron_fingerprint(neurons)[:19]}…).")

    def activations(self, model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str],
                    batch_size: int = 8) -> np.ndarray:
        """Raw activations of the monitor's neurons, rendered as the monitor was fitted."""
        self.check_model(model)
        return neuron_activations(model, tokenizer, prompts, self.neurons, chat_template=self.chat_template,
                                  system_prompt=self.system_prompt, max_length=self.max_length,
                                  batch_size=batch_size)

    def score(self, model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 8,
              model_checksum: str | None = None) -> np.ndarray:
        """One score in (0, 1) per prompt (flag it when above a threshold, e.g. ``self.threshold(0.01)``).
        With ``model_checksum``, other weights than the monitor was fitted on are refused."""
        prompts = prompt_list(prompts)
        self.check_model(model, model_checksum)
        if not prompts:
            return np.zeros(0)
        return self.probabilities(self.activations(model, tokenizer, prompts, batch_size))

    # files ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        shape = self.model_shape or self.neurons.shape
        return {
            "format": FORMAT,
            "model": {"checksum": self.model_checksum, "name": shape.model_name, "shape": shape.to_dict(),
                      **{k: v for k, v in self.info.get("model", {}).items() if k not in ("checksum", "shape")}},
            "neuron_set": {"name": self.neurons.name, "size": len(self.neurons),
                           "fingerprint": neuron_fingerprint(self.neurons), "set": self.neurons.to_dict()},
            "features": "activation at the last prompt token of each neuron of neuron_set.set, in its order "
                        "(layer, site, index); z = (x - mean) / scale; score = sigmoid(weight . z + bias)",
            "encoding": {"position": "last", "chat_template": self.chat_template,
                         "system_prompt": self.system_prompt, "max_length": self.max_length},
            "readout": {"kind": "logistic_l2", "bias": self.bias, "flag": "score > threshold"},
            "thresholds": [{"fpr": rate, "threshold": t, **self.info.get("threshold_stats", {}).get(repr(rate), {})}
                           for rate, t in sorted(self.thresholds.items())],
            **{k: v for k, v in self.info.items() if k not in ("model", "threshold_stats")},
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``monitor.safetensors`` then ``monitor.json`` (which names the tensors' sha256) into
        ``directory``, each atomically; returns the folder."""
        from safetensors.torch import save_file

        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise DataError(f"monitor folder {d} is a file; choose another --out.")
        triples = list(self.neurons)
        tensors = {
            "mean": torch.from_numpy(self.mean.copy()), "scale": torch.from_numpy(self.scale.copy()),
            "weight": torch.from_numpy(self.weight.copy()), "bias": torch.tensor([self.bias], dtype=torch.float64),
            "layer": torch.tensor([t[0] for t in triples], dtype=torch.int64),
            "site": torch.tensor([site_order(t[1]) for t in triples], dtype=torch.int64),
            "index": torch.tensor([t[2] for t in triples], dtype=torch.int64),
        }
        with atomic_path(d / TENSOR_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        doc = self.to_dict()
        doc["tensors"] = {"file": TENSOR_FILE, "sha256": "sha256:" + sha256_file(d / TENSOR_FILE)}
        doc.setdefault("safeneurons_version", package_version())
        write_json_atomic(d / JSON_FILE, doc)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model_checksum: str | None = None,
             shape: ModelShape | None = None, neuron_set: NeuronSet | None = None) -> Monitor:
        """The monitor in folder ``path`` (or its ``monitor.json``). ``model_checksum``: refuse other weights
        than fitted on; ``shape``: refuse a model of another shape; ``neuron_set``: refuse another set."""
        p = Path(path)
        jpath = p / JSON_FILE if p.is_dir() or p.suffix != ".json" else p
        if not jpath.is_file():
            raise DataError(f"{jpath}: no monitor here (make one with safeneurons monitor fit).")
        doc = read_json(jpath)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataError(f"{jpath}: not a safeneurons monitor (format "
                            f"{doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r}).")
        tpath = jpath.parent / Path(str(doc.get("tensors", {}).get("file", TENSOR_FILE))).name  # beside it
        try:
            raw, _ = read_safetensors(tpath)
        except FileNotFoundError:
            raise DataError(f"{jpath}: its tensor file {tpath} is missing.") from None
        want = doc.get("tensors", {}).get("sha256")
        if want != "sha256:" + sha256_file(tpath):
            raise DataError(f"{jpath}: {tpath.name} does not match the sha256 this file names (written by "
                            "another fit, or cut while written); refit the monitor.")
        try:
            neurons = NeuronSet.from_dict(doc["neuron_set"]["set"], source=str(jpath))
            enc = doc["encoding"]
            monitor = cls(
                neurons=neurons, mean=raw["mean"].numpy(), scale=raw["scale"].numpy(),
                weight=raw["weight"].numpy(), bias=float(raw["bias"].reshape(-1)[0]),
                thresholds={float(r["fpr"]): float(r["threshold"]) for r in doc.get("thresholds", [])},
                model_checksum=str(doc["model"].get("checksum", "")),
                model_shape=ModelShape.from_dict(doc["model"]["shape"]),
                chat_template=bool(enc["chat_template"]), system_prompt=enc.get("system_prompt"),
                max_length=int(enc["max_length"]),
                info={k: v for k, v in doc.items() if k not in _STRUCTURE}
                | {"model": {k: v for k, v in doc["model"].items() if k != "shape"}},
            )
            order = list(zip(raw["layer"].tolist(), raw["site"].tolist(), raw["index"].tolist()))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{jpath}: malformed monitor ({type(exc).__name__}: {exc}).") from None
        if order != [(layer, site_order(site), i) for layer, site, i in neurons]:
            raise DataError(f"{jpath}: the tensor file's neurons are not the set's neurons in order.")
        if doc["neuron_set"].get("fingerprint") != neuron_fingerprint(neurons):
            raise DataError(f"{jpath}: neuron set fingerprint does not match its neurons.")
        monitor.info["threshold_stats"] = {repr(float(r["fpr"])): {k: v for k, v in r.items()
                                                                   if k not in ("fpr", "threshold")}
                                           for r in doc.get("thresholds", [])}
        monitor._check(shape, model_checksum, str(jpath))
        if neuron_set is not None:
            monitor.check_neurons(neuron_set, str(jpath))
        return monitor


# -- fitting ------------------------------------------------------------------------------------------------


def _prompt_set(prompts: PromptSet | Sequence[str], name: str) -> PromptSet:
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, str):
        raise ConfigError(f"{name} prompts must be a list of strings, not one string.")
    return PromptSet(name, [Prompt(str(t)) for t in prompts])


def _split(n: int, held_out: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded permutation, ``round(held_out * n)`` held out (at least 1)."""
    n_held = max(1, round(held_out * n))
    if n - n_held < 2:
        raise DataError(f"{name}: {n} prompts leave fewer than 2 to fit on after holding out {n_held}; "
                        "give more prompts or a smaller held_out.")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def fit_monitor(model: torch.nn.Module, tokenizer: Any, neuron_set: NeuronSet, harmful: PromptSet | Sequence[str],
                harmless: PromptSet | Sequence[str], config: MonitorConfig | None = None, *,
                model_checksum: str = "", model_name: str = "") -> Monitor:
    """Fit a :class:`Monitor` on the activations of ``neuron_set`` (see the module text for the readout).

    Each group is de-duplicated (exact text), sampled to ``config.n`` and split into fit and held-out parts
    (``config.held_out``, seeded). The readout is fitted on the fit parts; each threshold of ``config.fprs``
    is chosen on the held-out benign scores, and the held-out AUC and TPR at each threshold are stored.
    ``model_checksum`` (e.g. ``LoadedModel.checksum``) is what :meth:`Monitor.load` checks models against."""
    cfg = config or MonitorConfig()
    model_checksum = "" if model_checksum == "unknown" else model_checksum  # LoadedModel's "no weight files"
    if not neuron_set:
        raise ConfigError(f"neuron set {neuron_set.name!r} is empty; a monitor needs at least one neuron.")
    shape = model_layout(model).shape(model_name, model_checksum)
    neuron_set.check_fits(shape)
    groups: dict[str, PromptSet] = {}
    for name, prompts in (("harmful", harmful), ("harmless", harmless)):
        ps = _prompt_set(prompts, name)
        unique, seen = [], set()
        for p in ps.prompts:
            if p.text not in seen:
                seen.add(p.text)
                unique.append(p)
        if len(unique) < len(ps):
            log.info("%s: %d duplicate prompt(s) dropped before the split", name, len(ps) - len(unique))
        groups[name] = ps.derive(ps.name, unique, "unique texts").sample(cfg.n, cfg.seed)
    splits = {name: _split(len(ps), cfg.held_out, cfg.seed, f"{name} prompts ({ps.name})")
              for name, ps in groups.items()}
    acts = {name: neuron_activations(model, tokenizer, ps.texts(), neuron_set, chat_template=cfg.chat_template,
                                     system_prompt=cfg.system_prompt, max_length=cfg.max_length,
                                     batch_size=cfg.batch_size)
            for name, ps in groups.items()}
    x = np.concatenate([acts["harmful"][splits["harmful"][0]], acts["harmless"][splits["harmless"][0]]])
    y = np.concatenate([np.ones(splits["harmful"][0].size, bool), np.zeros(splits["harmless"][0].size, bool)])
    fitted = fit_readout(x, y, cfg.l2)
    weight = fitted.weight
    monitor = Monitor.of(neuron_set, fitted, model_checksum=model_checksum, model_shape=shape,
                         chat_template=cfg.chat_template, system_prompt=cfg.system_prompt, max_length=cfg.max_length)
    held = {name: monitor.probabilities(acts[name][splits[name][1]]) for name in groups}
    train_scores = monitor.probabilities(x)
    stats: dict[str, dict[str, Any]] = {}
    for rate in cfg.fprs:
        t = threshold_for_fpr(held["harmless"], rate)
        monitor.thresholds[rate] = t
        stats[repr(rate)] = {"realised_fpr": realised_fpr(held["harmless"], t),
                             "tpr_held_out": float(np.mean(held["harmful"] > t)),
                             "n_benign": int(held["harmless"].size)}
        if rate > 0 and held["harmless"].size < 1 / rate:
            log.warning("the threshold for FPR %g rests on %d held-out benign prompts (fewer than 1/FPR): it is "
                        "their largest score, and the realised FPR is 0.", rate, held["harmless"].size)
    monitor.info = {
        "model": {"name": shape.model_name, "checksum": model_checksum},
        "threshold_stats": stats,
        "held_out": {"n_harmful": int(held["harmful"].size), "n_harmless": int(held["harmless"].size),
                     "auc": roc_auc(held["harmful"], held["harmless"]),
                     "auc_fit": roc_auc(train_scores[y], train_scores[~y])},
        "fit": {"config": to_dict(cfg), "n_harmful": int(splits["harmful"][0].size),
                "n_harmless": int(splits["harmless"][0].size), "l2": cfg.l2, "class_weight": "balanced",
                "weight_norm": float(np.linalg.norm(weight))},
        "data": {name: {"name": ps.name, "n": len(ps), "sha256": ps.sha256, "origin": ps.origin}
                 for name, ps in groups.items()},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return monitor


# -- guarded generation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardedGeneration:
    """One prompt's answer under the monitor: ``text`` is the refusal when ``flagged``, else the generation
    (``generation``; None when flagged, since that row stopped after the prefill)."""

    text: str
    flagged: bool
    score: float
    generation: Generation | None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "flagged": self.flagged, "score": self.score,
                "generation": None if self.generation is None else self.generation.to_dict()}


def guarded_generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], monitor: Monitor,
                     threshold: float, generation_config: GenerationConfig | None = None, *,
                     refusal: str = DEFAULT_REFUSAL,
                     interventions: Sequence[Intervention] | Intervention | NeuronSet | None = None,
                     progress: bool = False) -> list[GuardedGeneration]:
    """Generate like :func:`~safeneurons.evaluate.generate.generate`, with the monitor reading each prompt
    from the prefill generation runs anyway; a prompt scoring above ``threshold`` (e.g.
    ``monitor.threshold(0.01)``) gets ``refusal`` and ``flagged=True`` instead of its generation.

    No second forward pass: :class:`PrefillCapture` hooks keep the set's activations at the last prompt token
    of each batch's first forward (the prefill; prompts are left-padded), and a stopping criterion, which
    ``generate`` calls right after that pass, scores the batch and marks the flagged rows finished, so they
    cost no further decoding (the batch ends when every row is flagged). Unflagged rows decode exactly as
    without the monitor. Prompts are rendered with ``generation_config``'s chat template and system prompt,
    which must be those the monitor was fitted with; prompts are never truncated here (``score`` keeps the
    last ``max_length`` tokens). ``interventions`` are active during generation and the monitor reads the
    activations they produce. No generation cache: a cached answer would have no prefill to read."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    from safeneurons.intervene.hooks import as_interventions, intervene

    config = generation_config or GenerationConfig()
    prompts = prompt_list(prompts)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ConfigError(f"threshold = {threshold!r}; expected a finite number (e.g. monitor.threshold(0.01)).")
    if (config.chat_template, config.system_prompt) != (monitor.chat_template, monitor.system_prompt):
        raise ConfigError(
            f"the monitor was fitted on prompts rendered with chat_template={monitor.chat_template}, "
            f"system_prompt={monitor.system_prompt!r}; generation uses chat_template={config.chat_template}, "
            f"system_prompt={config.system_prompt!r}. Its scores would not be calibrated: match them.")
    monitor.check_model(model)
    if not prompts:
        return []
    rendered = [render_prompt(tokenizer, p, config.chat_template, config.system_prompt) for p in prompts]
    capture = PrefillCapture(model, monitor.neurons)
    scores = np.full(len(prompts), np.nan)
    state: dict[str, Any] = {"rows": [], "flags": None}

    def before_batch(rows: list[int]) -> None:
        capture.reset()
        state.update(rows=list(rows), flags=None)

    def batch_flags() -> torch.Tensor:
        if state["flags"] is None:
            p = monitor.probabilities(capture.features())
            scores[state["rows"]] = p
            state["flags"] = torch.as_tensor(p > threshold)
        return state["flags"]

    class FlaggedRowsDone(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores_: Any, **kwargs: Any) -> torch.Tensor:
            return batch_flags().to(input_ids.device)

    stopping = StoppingCriteriaList([FlaggedRowsDone()])
    ivs = as_interventions(interventions) if interventions is not None else []
    # interventions first, so that the monitor's hooks (registered after) read what they produce
    with intervene(model, ivs) if ivs else nullcontext(), capture.attached():
        gens = _run_batches(model, tokenizer, rendered, config, progress, before_batch=before_batch,
                            stopping=stopping, on_batch=lambda done: batch_flags())
    out = []
    for i, g in enumerate(gens):
        flagged = bool(scores[i] > threshold)
        out.append(GuardedGeneration(refusal if flagged else g.text, flagged, float(scores[i]),
                                     None if flagged else g))
    return out


__all__ = ["DEFAULT_REFUSAL", "GuardedGeneration", "Monitor", "MonitorConfig", "PrefillCapture", "fit_monitor",
           "guarded_generate", "neuron_activations", "neuron_fingerprint", "realised_fpr", "roc_auc",
           "threshold_for_fpr", "tpr_at_fpr"]
