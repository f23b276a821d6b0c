"""Named public datasets, read from the local datasets folder (verified against its MANIFEST.json)
or, when absent and online, from the Hugging Face Hub.

``load_prompts("advbench")``, ``load_prompts("multijail", language="zh")``,
``load_prompts("xstest:safe")`` or a file path all give a :class:`PromptSet`."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from safeneurons.data.paths import find_data_dir
from safeneurons.data.prompts import Prompt, PromptSet, load_prompt_file
from safeneurons.errors import DataError
from safeneurons.io import csv_records, jsonl_objects, read_json, sha256_file
from safeneurons.registry import Registry

MULTIJAIL_LANGUAGES = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
RESOURCE_GROUPS = {"high": ("en", "zh", "it", "vi"), "medium": ("ar", "ko", "th"), "low": ("bn", "sw", "jv")}


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: the manifest files it reads, a row reader, and a hub fallback."""

    files: tuple[str, ...]  # manifest "path" entries
    reader: Callable[[list[Path], str | None, str | None], Iterator[Prompt]]
    role: str
    hub_id: str = ""
    hub_reader: Callable[[Any, str | None, str | None], Iterator[Prompt]] | None = None
    variants: tuple[str, ...] = ()


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    return csv_records(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    return jsonl_objects(path)


def _first_category(raw: str) -> str:
    try:
        cats = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw or ""
    return cats[0] if isinstance(cats, list) and cats else ""


def _advbench(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    for i, row in _csv_rows(paths[0]):
        yield Prompt(row["prompt"].strip(), id=f"advbench-{i - 2}", category=_first_category(row["harm_categories"]),
                     source="advbench")


def _harmbench(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    want = variant or "standard"
    for path in paths:
        for _, row in _csv_rows(path):
            if want != "all" and row["FunctionalCategory"] != want:
                continue
            yield Prompt(row["Behavior"].strip(), id=row["BehaviorID"], category=row["SemanticCategory"],
                         source="harmbench")


def _strongreject(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    for i, row in _csv_rows(paths[0]):
        if variant and variant != "all":
            if variant.startswith("no-") and row["source"].lower() == variant[3:].lower():
                continue
            if not variant.startswith("no-") and row["source"].lower() != variant.lower():
                continue
        yield Prompt(row["forbidden_prompt"].strip(), id=f"strongreject-{i - 2}", category=row["category"],
                     source=f"strongreject/{row['source']}")


def _donotanswer(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    for i, row in _csv_rows(paths[0]):
        yield Prompt(row["prompt"].strip(), id=f"donotanswer-{i - 2}", category=row["risk_area"], source="donotanswer")


def check_multijail_language(language: str) -> None:
    """DataError unless MultiJail has ``language`` (checked when a config loads and again when the file is read)."""
    if language not in MULTIJAIL_LANGUAGES:
        raise DataError(f"MultiJail has no language {language!r}; languages: {', '.join(MULTIJAIL_LANGUAGES)}.")


def _multijail(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    language = lang or variant or "en"
    check_multijail_language(language)
    for i, row in _csv_rows(paths[0]):
        try:
            tags = ast.literal_eval(row["tags"])
        except (ValueError, SyntaxError):
            tags = [row["tags"]]
        yield Prompt(row[language].strip(), id=f"multijail-{row['id']}", category=tags[0] if tags else "",
                     language=language, source="multijail")


def _xstest(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    want = variant or "safe"
    for _, row in _csv_rows(paths[0]):
        if want != "all" and row["label"] != want:
            continue
        yield Prompt(row["prompt"].strip(), id=f"xstest-{row['id']}", category=row["type"], source="xstest")


def _self_instruct(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    for path in paths:
        for _, row in _jsonl_rows(path):
            text = row["instruction"].strip()
            inst = row.get("instances") or []
            extra = (inst[0].get("input") or "").strip() if inst else ""
            if extra:
                text = f"{text}\n\n{extra}"
            yield Prompt(text, id=str(row["id"]), category=str(row.get("motivation_app") or row.get("name") or ""),
                         source="self_instruct")


def _gsm8k_questions(paths: list[Path], variant: str | None, lang: str | None) -> Iterator[Prompt]:
    for i, row in _jsonl_rows(paths[0]):
        yield Prompt(str(row["question"]).strip(), id=f"gsm8k-{i - 1}", source="gsm8k")


def _hub_generic(field: str, category: str = "") -> Callable[[Any, str | None, str | None], Iterator[Prompt]]:
    def read(ds: Any, variant: str | None, lang: str | None) -> Iterator[Prompt]:
        for i, row in enumerate(ds):
            yield Prompt(str(row[field]).strip(), id=str(i), category=str(row.get(category, "")) if category else "",
                         source="hub")

    return read


DATASETS.add("advbench", DatasetSpec(("advbench/advbench.csv",), _advbench, "harmful", "walledai/AdvBench",
                                     _hub_generic("prompt")), summary="AdvBench 520 harmful behaviours")
DATASETS.add("harmbench", DatasetSpec(("harmbench/harmbench_behaviors_text_test.csv",
                                       "harmbench/harmbench_behaviors_text_val.csv"), _harmbench, "harmful",
                                      variants=("standard", "contextual", "copyright", "all")),
             summary="HarmBench text behaviours (default: the 200 standard ones, with semantic categories)")
DATASETS.add("strongreject", DatasetSpec(("strongreject/strongreject_dataset.csv",), _strongreject, "harmful",
                                         "walledai/StrongREJECT", _hub_generic("prompt", "category"),
                                         variants=("no-advbench", "all")),
             summary="StrongREJECT 313 forbidden prompts (variant no-advbench drops its 25 AdvBench rows)")
DATASETS.add("strongreject-small", DatasetSpec(("strongreject/strongreject_small_dataset.csv",), _strongreject,
                                               "harmful"), summary="StrongREJECT small (60)")
DATASETS.add("donotanswer", DatasetSpec(("donotanswer/donotanswer.csv",), _donotanswer, "harmful",
                                        "LibrAI/do-not-answer", _hub_generic("question", "risk_area")),
             summary="Do-Not-Answer 939 prompts with risk areas")
DATASETS.add("multijail", DatasetSpec(("multijail/MultiJail.csv",), _multijail, "multilingual-harmful",
                                      variants=MULTIJAIL_LANGUAGES),
             summary="MultiJail 315 parallel harmful prompts in 10 languages (variant = language)")
DATASETS.add("xstest", DatasetSpec(("xstest/xstest_prompts.csv",), _xstest, "harmless",
                                   variants=("safe", "unsafe", "all")),
             summary="XSTest v2 prompts (default: the 250 safe look-alikes, for over-refusal)")
DATASETS.add("gsm8k", DatasetSpec(("gsm8k/gsm8k_test.jsonl",), _gsm8k_questions, "capability"),
             summary="GSM8K test questions as prompts (id gsm8k-<row index>, the capability check's indices)")
DATASETS.add("self_instruct", DatasetSpec(("self_instruct/user_oriented_instructions.jsonl",
                                           "self_instruct/seed_tasks.jsonl"), _self_instruct, "harmless"),
             summary="Self-Instruct 252 user-oriented + 175 seed instructions (benign contrast set)")


@lru_cache(maxsize=4)
def _manifest(data_dir: str) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in read_json(Path(data_dir) / "MANIFEST.json")}


@lru_cache(maxsize=64)
def _verified(path: str, sha: str) -> bool:
    return sha256_file(path) == sha


def dataset_file(relpath: str, data_dir: str | os.PathLike[str] | None = None, verify: bool = True) -> Path:
    """Path of a manifest file in the datasets folder, checked against its sha256."""
    root = find_data_dir(data_dir)
    assert root is not None
    entry = _manifest(str(root)).get(relpath)
    if entry is None:
        raise DataError(f"{root / 'MANIFEST.json'} lists no file {relpath!r}.")
    path = root / relpath
    if not path.is_file():
        raise DataError(f"{path} is listed in MANIFEST.json but missing.")
    if verify and not _verified(str(path), entry["sha256"]):
        raise DataError(f"{path}: sha256 does not match MANIFEST.json ({entry['sha256'][:12]}…); the file changed.")
    return path


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, variant = spec.partition(":")
    return name, (variant or None)


def load_prompts(spec: str | os.PathLike[str], *, language: str | None = None, column: str | None = None,
                 response_column: str | None = None, data_dir: str | os.PathLike[str] | None = None,
                 limit: int | None = None, seed: int = 0) -> PromptSet:
    """Load a prompt set from a file path or a named dataset (``name[:variant]``)."""
    s = str(spec)
    name, variant = parse_spec(s)
    if name not in DATASETS:
        p = Path(s)
        if p.suffix in {".csv", ".jsonl", ".txt", ".gz"} or p.exists():
            ps = load_prompt_file(p, column=column, response_column=response_column)
            return ps.sample(limit, seed) if limit else ps
        DATASETS.entry(name)  # raises with suggestions
    ds = DATASETS.get(name)
    if variant and ds.variants and variant not in ds.variants:
        raise DataError(f"dataset {name!r} has no variant {variant!r}; variants: {', '.join(ds.variants)}.")
    root = find_data_dir(data_dir, required=False)
    if root is not None:
        paths = [dataset_file(f, root) for f in ds.files]
        prompts = list(ds.reader(paths, variant, language))
        origin = ", ".join(str(p) for p in paths)
        sha = "sha256:" + ",".join(_manifest(str(root))[f]["sha256"][:16] for f in ds.files)
    else:
        prompts, origin, sha = _from_hub(name, ds, variant, language), f"hf:{ds.hub_id}", ""
    label = name if not variant else f"{name}:{variant}"
    if language:
        label += f"[{language}]"
    ps = PromptSet(label, prompts, origin=origin)
    if sha:
        ps.notes.append(f"files {sha}")
    if not ps.prompts:
        raise DataError(f"dataset {label} gave no prompts.")
    return ps.sample(limit, seed) if limit else ps


def _from_hub(name: str, ds: DatasetSpec, variant: str | None, language: str | None) -> list[Prompt]:
    if not ds.hub_id or ds.hub_reader is None:
        raise DataError(
            f"dataset {name!r} needs the local datasets folder (no hub fallback is defined); "
            "set SAFENEURONS_DATA_DIR or --data-dir."
        )
    try:
        from datasets import load_dataset  # optional extra 'hub'
    except ImportError:
        raise DataError(f"dataset {name!r}: no local copy and the 'datasets' package is missing "
                        "(pip install 'safeneurons[hub]').") from None
    try:
        hub = load_dataset(ds.hub_id, split="train")
    except Exception as exc:  # network or auth problems: one clear line
        raise DataError(f"dataset {name!r}: no local copy, and the hub load of {ds.hub_id} failed: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return list(ds.hub_reader(hub, variant, language))


def read_jsonl_file(relpath: str, data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """All rows of a manifest JSONL(.gz) file (capability data, preference pairs)."""
    return [row for _, row in _jsonl_rows(dataset_file(relpath, data_dir))]


def read_text_file(relpath: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    return dataset_file(relpath, data_dir).read_text(encoding="utf-8")
