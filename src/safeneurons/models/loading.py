"""``load_model(spec)``: one entry point for local directories, offline registry names and hub ids.

Resolution order: an existing local directory, then an offline registry name or Hugging Face id
(converted once by :func:`safeneurons.models.offline.pull`), then the normal ``from_pretrained``
hub path. Every loaded model carries a weights checksum so results can name exactly what ran."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safeneurons.errors import ConfigError, ModelSpecError
from safeneurons.io import cache_dir, read_json, write_json_atomic
from safeneurons.models.offline import OFFLINE_MODELS, SOURCE_FILE, find_offline_model, pull

logger = logging.getLogger("safeneurons.models")

Source = Literal["local", "offline-registry", "hub"]

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any  # transformers PreTrainedTokenizerBase, pad token set
    spec: str  # what the user gave
    name: str  # short name, e.g. "smollm2-135m-instruct"
    path: Path | None  # local directory the weights came from (hub: the snapshot dir, if known)
    checksum: str  # "sha256:<hex>" over the weight files, or "unknown"
    dtype: str  # e.g. "float32"
    source: Source


# --------------------------------------------------------------------------------------------
# checksums


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """Sorted ``*.safetensors`` of a model directory, else sorted ``*.bin``."""
    d = Path(path)
    return sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))


def _fingerprint(files: list[Path]) -> list[list[Any]]:
    out = []
    for f in files:
        st = f.stat()  # follows hub-cache symlinks to the blobs
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def _sha256_concat(files: list[Path]) -> str:
    """sha256 of the files' bytes in order (for one file: that file's sha256, like ``sha256sum``)."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return "sha256:" + h.hexdigest()


def _checksum_from_source(d: Path, fingerprint: list[list[Any]]) -> str | None:
    """Reuse the hash :func:`pull` recorded for a converted single-file model (no 6.7 GB re-read)."""
    src = d / SOURCE_FILE
    if len(fingerprint) != 1 or not src.is_file():
        return None
    try:
        weights = read_json(src).get("weights") or []
    except (OSError, ValueError, AttributeError):
        return None
    if len(weights) == 1:
        w = weights[0]
        if [w.get("file"), w.get("size"), w.get("mtime_ns")] == fingerprint[0] and w.get("sha256"):
            return "sha256:" + str(w["sha256"])
    return None


def _checksum_cache() -> Path:
    return cache_dir() / "checksums.json"


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable checksum cache %s (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def weights_checksum(path: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` over a model directory's weight files (see :func:`weight_files`).

    Computed once per (absolute path, file names, sizes, mtimes) and remembered in
    ``<cache>/checksums.json``, so a multi-GB model is hashed only when it changes."""
    d = Path(path).expanduser().absolute()
    files = weight_files(d)
    if not files:
        raise ModelSpecError(f"{d} has no *.safetensors or *.bin weight files to checksum")
    fingerprint = _fingerprint(files)
    cache_file = _checksum_cache()
    cache = _read_cache(cache_file)
    hit = cache.get(str(d))
    if isinstance(hit, dict) and hit.get("files") == fingerprint and hit.get("checksum"):
        return str(hit["checksum"])
    checksum = _checksum_from_source(d, fingerprint)
    if checksum is None:
        logger.info("hashing %d weight file(s) in %s", len(files), d)
        checksum = _sha256_concat(files)
    cache = _read_cache(cache_file)  # re-read: hashing can take a while and others may have written
    cache = {k: v for k, v in cache.items() if Path(k).is_dir()}  # forget deleted models (temporary runs, tests)
    cache[str(d)] = {"files": fingerprint, "checksum": checksum}
    try:
        write_json_atomic(cache_file, cache)
    except OSError as exc:  # a read-only cache must not stop a load
        logger.warning("could not update checksum cache %s (%s)", cache_file, exc)
    return checksum


# --------------------------------------------------------------------------------------------
# loading


def _torch_dtype(dtype: str, on_cuda: bool) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if on_cuda else torch.float32
    key = _DTYPES.get(str(dtype).lower())
    if key is None:
        raise ConfigError(
            f"dtype {dtype!r} is not supported; use one of: auto, float32, bfloat16, float16 "
            f"(auto = float32 on CPU, bfloat16 on CUDA)"
        )
    return getattr(torch, key)


def _target_device(device: str | None, device_map: str | None) -> str | None:
    import torch

    if device is not None and device_map is not None:
        raise ConfigError(f"pass either device={device!r} or device_map={device_map!r}, not both")
    if device_map is not None:
        return None
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _looks_like_path(spec: str | os.PathLike[str]) -> bool:
    """True for things a user meant as a filesystem path (a hub id is ``org/name`` or ``name``)."""
    if not isinstance(spec, str):
        return True
    s = spec.strip()
    return (
        os.path.isabs(s)
        or s.startswith((".", "~"))
        or "\\" in s
        or s.count("/") > 1
        or s.endswith("/")
    )


def _registry_list() -> str:
    return ", ".join(OFFLINE_MODELS.names())


def _check_local_dir(d: Path, trust_remote_code: bool = False) -> None:
    """A local model directory must hold a readable ``config.json`` whose ``model_type`` this transformers
    knows (or that ships its own code, with ``trust_remote_code``): said in one line before any loading, so a
    broken file is not reported as a 300-line traceback or as a missing tokenizer package."""
    cfg_path = d / "config.json"
    if cfg_path.is_file():
        import difflib
        import json

        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelSpecError(f"{cfg_path} cannot be read as JSON ({exc}); restore it, or re-save the model "
                                 "with save_pretrained.") from None
        if not isinstance(cfg, dict):
            raise ModelSpecError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not an object.")
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        model_type = cfg.get("model_type")
        if model_type not in CONFIG_MAPPING_NAMES and not (trust_remote_code and cfg.get("auto_map")):
            close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING_NAMES), n=3)
            hint = f" (closest known: {', '.join(close)})" if close else ""
            raise ModelSpecError(f"{cfg_path}: model_type {model_type!r} is not one this transformers knows{hint}; "
                                 "fix the file, upgrade transformers, or pass --set model.trust_remote_code=true "
                                 "for a model that ships its own code.")
        return
    ggufs = sorted(p.name for p in d.glob("*.gguf"))
    hint = (
        f" It holds GGUF file(s) {', '.join(ggufs)}: convert them first (see safeneurons.models.offline.convert_gguf)."
        if ggufs
        else " Point to a directory written by save_pretrained (config.json, *.safetensors, tokenizer files)."
    )
    raise ModelSpecError(f"model directory {d} has no config.json, so it is not a Hugging Face model directory.{hint}")


def _load_tokenizer(where: str, trust_remote_code: bool, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
            logger.info("tokenizer of %s has no pad token; using eos %r as pad", where, tok.eos_token)
        else:
            logger.warning("tokenizer of %s has neither a pad nor an eos token; batching will fail", where)
    return tok


def _load_weights(
    where: str, *, torch_dtype: Any, device: str | None, device_map: str | None,
    trust_remote_code: bool, **kwargs: Any,
) -> Any:
    from transformers import AutoModelForCausalLM

    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(
        where, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kwargs
    )
    if device is not None:
        model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model


def _finish(model: Any, tok: Any) -> str:
    """Give generation a pad id (avoids a warning per call); return the parameter dtype name."""
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _short_name(d: Path) -> str:
    src = d / SOURCE_FILE
    if src.is_file():
        try:
            return str(read_json(src)["name"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return d.name


def check_model_spec(spec: str | os.PathLike[str], trust_remote_code: bool = False) -> None:
    """What can be said of a model spec without loading anything or reaching the network: a local directory
    must hold a readable, known ``config.json`` (:func:`_check_local_dir`); a path that is a file, or that
    names no directory and no offline model, is refused. Hub ids pass (they are checked when loaded).
    Commands call this before they create a run folder; :func:`load_model` starts with it."""
    spec_str = os.fspath(spec)
    local = Path(spec_str).expanduser()
    if local.is_dir():
        _check_local_dir(local, trust_remote_code)
    elif local.exists():
        raise ModelSpecError(
            f"model spec {spec_str!r} is a file, not a model directory; give the directory holding config.json"
        )
    elif find_offline_model(spec_str) is None and _looks_like_path(spec):
        raise _unloadable(spec_str, f"no such directory: {local.absolute()}")


def _unloadable(spec_str: str, reason: str) -> ModelSpecError:
    return ModelSpecError(
        f"cannot load model {spec_str!r}: it is neither a local model directory, nor an offline registry "
        f"name ({_registry_list()}), nor a reachable Hugging Face hub id. Reason: {reason}"
    )


def load_model(
    spec: str | os.PathLike[str],
    *,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory, an offline registry name/hf_id,
    or a Hugging Face hub id (tried in that order). The model is in eval mode.

    ``dtype="auto"`` means float32 on CPU (bf16 is several times slower on CPUs without native
    bf16) and bfloat16 on CUDA. ``device_map`` is passed to transformers (multi-GPU); otherwise
    the model is moved to ``device`` (default: cuda if available, else cpu)."""
    import torch

    spec_str = os.fspath(spec)
    target = _target_device(device, device_map)
    on_cuda = (target or "").startswith("cuda") or (device_map is not None and torch.cuda.is_available())
    torch_dtype = _torch_dtype(dtype, on_cuda)
    common = {"torch_dtype": torch_dtype, "device": target, "device_map": device_map,
              "trust_remote_code": trust_remote_code}

    check_model_spec(spec, trust_remote_code)  # a broken folder, a file or a missing path: said before loading
    local = Path(spec_str).expanduser()
    if revision is not None and (local.is_dir() or find_offline_model(spec_str) is not None):
        logger.warning("revision=%r is ignored for %r: it only applies to hub ids", revision, spec_str)
    if local.is_dir():
        return _load_dir(local, spec_str, "local", _short_name(local), common)

    offline = find_offline_model(spec_str)
    if offline is not None:
        return _load_dir(pull(offline), spec_str, "offline-registry", offline.name, common)

    try:
        return _load_hub(spec_str, revision, common)
    except (OSError, ValueError, KeyError) as exc:
        raise _unloadable(spec_str, f"{type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _load_dir(d: Path, spec: str, source: Source, name: str, common: dict[str, Any]) -> LoadedModel:
    where = str(d)
    tok = _load_tokenizer(where, common["trust_remote_code"], local_files_only=True)
    model = _load_weights(where, local_files_only=True, **common)
    dtype = _finish(model, tok)
    checksum = weights_checksum(d) if weight_files(d) else "unknown"
    logger.info("loaded %s (%s, %s) from %s, %s", name, source, dtype, d, checksum)
    return LoadedModel(model, tok, spec, name, d, checksum, dtype, source)


def _load_hub(repo_id: str, revision: str | None, common: dict[str, Any]) -> LoadedModel:
    extra: dict[str, Any] = {"revision": revision} if revision else {}
    tok = _load_tokenizer(repo_id, common["trust_remote_code"], **extra)
    model = _load_weights(repo_id, **extra, **common)
    dtype = _finish(model, tok)
    snapshot = _hub_snapshot_dir(repo_id, revision)
    checksum = weights_checksum(snapshot) if snapshot is not None and weight_files(snapshot) else "unknown"
    logger.info("loaded %s (hub, %s) from %s, %s", repo_id, dtype, snapshot, checksum)
    return LoadedModel(model, tok, repo_id, repo_id.rsplit("/", 1)[-1], snapshot, checksum, dtype, "hub")


def _hub_snapshot_dir(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot directory ``from_pretrained`` just used (from the hub cache, offline)."""
    try:
        from transformers.utils import cached_file

        found = cached_file(repo_id, "config.json", revision=revision, local_files_only=True)
    except (OSError, ValueError, ImportError):
        return None
    return Path(found).parent if found else None
