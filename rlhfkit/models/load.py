"""Load local Hugging Face folders — causal LMs, PEFT adapter folders and tokenizers — never the network.

A folder that is not a usable model gets :class:`ModelLoadError` with one sentence naming the folder and
what is wrong (missing, no ``config.json``, a config of a model that is not a causal LM, no weights, weights
that do not fit the config), before transformers gets a chance to print a stack trace.

Pad-token policy (:func:`load_tokenizer`): training batches need *some* padding value. A tokenizer without
a pad token gets its EOS token as pad. That id is only a filler: which positions are real is always decided
by the attention mask, never by comparing ids with ``pad_token_id`` (EOS is also a real token at the end
of a response). Reward and value models are the one place where plain transformers *does* compare ids with
the pad id; they get a dedicated pad token, see :mod:`rlhfkit.models.reward`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhfkit.errors import UserError

# Nothing in rlhfkit may download; make that the default for every Hugging Face library in this process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "auto": "auto"}


class ModelLoadError(UserError):
    """A model, adapter or tokenizer folder that cannot be loaded; the message is one sentence."""


def resolve_dtype(dtype):
    """``None`` → ``torch.float32`` (CPU training wants fp32); a name ("bf16", "auto", …) or a torch dtype."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(sorted(_DTYPES))} or a torch.dtype")
    return name if name == "auto" else getattr(torch, name)


def is_adapter_folder(path: str | Path) -> bool:
    """True when ``path`` is a PEFT adapter folder (holds ``adapter_config.json``)."""
    return (Path(path) / "adapter_config.json").is_file()


def _require_folder(path: str | Path, what: str = "model folder") -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"{what} '{folder}' does not exist.")
    if not folder.is_dir():
        raise ModelLoadError(f"{what} '{folder}' is a file, not a folder.")
    return folder.resolve()


def _read_json(file: Path, folder: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{folder}': {file.name} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"'{folder}': {file.name} does not hold a JSON object.")
    return data


def read_model_config(path: str | Path):
    """Validate ``path`` as a Hugging Face model folder and return its ``PretrainedConfig``.

    Checks, in order: the folder exists; ``config.json`` exists and is JSON with a ``model_type`` known to
    the installed transformers; some weight file exists. Raises :class:`ModelLoadError` otherwise.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    folder = _require_folder(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"'{folder}' is not a Hugging Face model folder: it has no config.json.")
    raw = _read_json(config_file, folder)
    model_type = raw.get("model_type")
    if not model_type:
        raise ModelLoadError(f"'{folder}': config.json has no model_type, so the architecture is unknown.")
    if model_type not in CONFIG_MAPPING_NAMES:
        import transformers

        raise ModelLoadError(
            f"'{folder}': model_type '{model_type}' is not known to transformers {transformers.__version__}."
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"'{folder}' has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])})."
        )
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 — any parsing failure becomes one sentence
        raise ModelLoadError(f"'{folder}': config.json cannot be read ({_first_line(exc)}).") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_causal(folder: Path, config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and all(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelLoadError(
            f"'{folder}' holds a sequence-classification model ({architectures[0]}: a reward or value "
            "model), not a causal LM; load it with rlhfkit.models.load_reward_model."
        )
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"'{folder}': config.json describes a '{config.model_type}' model, which is not a causal "
            "language model."
        )


def load_pretrained_checked(auto_class, folder: Path, dtype, what: str, **kwargs):
    """``auto_class.from_pretrained`` from a validated local folder; a weight problem becomes one sentence.

    Missing or mismatched weights are errors (transformers would otherwise initialise them at random with
    a warning): a reward model whose head silently re-initialises is worse than a crash.
    """
    try:
        model, info = auto_class.from_pretrained(
            folder, dtype=resolve_dtype(dtype), local_files_only=True, trust_remote_code=False,
            output_loading_info=True, **kwargs,
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 — corrupt or mismatched weights become one sentence
        raise ModelLoadError(f"could not load the {what} in '{folder}': {_first_line(exc)}.") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        problem = (f"{len(missing)} weight(s) missing from the checkpoint (e.g. {missing[0]})" if missing
                   else f"{len(mismatched)} weight(s) of the wrong shape (e.g. {mismatched[0]})")
        raise ModelLoadError(f"the {what} in '{folder}' does not match its config.json: {problem}.")
    return model


def set_attention(model, implementation: str | None, key: str = "model.attn_implementation"):
    """Switch ``model`` (a transformers or PEFT model) to the attention kernel ``implementation`` and return
    it; None leaves it as loaded. A kernel transformers cannot use here becomes one sentence naming ``key``."""
    if implementation is None:
        return model
    try:
        model.set_attn_implementation(implementation)
    except (ValueError, ImportError) as exc:
        reason = _first_line(exc).rstrip(".")
        raise ModelLoadError(f"{key}={implementation!r} cannot be used: {reason}.") from None
    return model


def _adapter_base_path(folder: Path, base_model_path: str | Path | None) -> Path:
    adapter_config = _read_json(folder / "adapter_config.json", folder)
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHT_FILES):
        raise ModelLoadError(f"adapter folder '{folder}' has no adapter weights ({ADAPTER_WEIGHT_FILES[0]}).")
    base = base_model_path or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(
            f"adapter folder '{folder}' does not name its base model (base_model_name_or_path is empty); "
            "pass base_model_path."
        )
    candidates = [Path(base).expanduser(), folder / base]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise ModelLoadError(
        f"the base model '{base}' named by adapter folder '{folder}' is not a local folder "
        "(rlhfkit never downloads); pass base_model_path."
    )


def load_causal_lm(
    path: str | Path,
    dtype=None,
    *,
    base_model_path: str | Path | None = None,
    adapter_trainable: bool = False,
    merge_adapter: bool = False,
    attn_implementation: str | None = None,
    **kwargs,
):
    """Load a causal LM from a local folder, offline.

    ``path`` is a standard model folder or a PEFT adapter folder (``adapter_config.json``); for the latter
    the base model (``base_model_name_or_path`` of the adapter config, or ``base_model_path``) is loaded and
    the adapter applied on top: a ``peft.PeftModel`` is returned, trainable if ``adapter_trainable``, or a
    plain model with the adapter merged if ``merge_adapter``. ``dtype`` defaults to float32 (see
    :func:`resolve_dtype`); ``attn_implementation`` switches the loaded model's attention kernel (see
    :func:`set_attention`; None keeps transformers' default); other ``kwargs`` go to ``from_pretrained``.
    The model is returned in eval mode, as transformers does. Raises :class:`ModelLoadError`.
    """
    from transformers import AutoModelForCausalLM

    folder = _require_folder(path)
    if is_adapter_folder(folder):
        model = _load_adapter(folder, dtype, base_model_path, adapter_trainable, merge_adapter, **kwargs)
    else:
        _check_causal(folder, read_model_config(folder))
        model = load_pretrained_checked(AutoModelForCausalLM, folder, dtype, "causal LM", **kwargs)
    return set_attention(model, attn_implementation)


def _load_adapter(folder: Path, dtype, base_model_path, trainable: bool, merge: bool, **kwargs):
    from peft import PeftModel

    base_folder = _adapter_base_path(folder, base_model_path)
    if is_adapter_folder(base_folder):
        raise ModelLoadError(f"the base model '{base_folder}' of adapter folder '{folder}' is itself an adapter.")
    base = load_causal_lm(base_folder, dtype, **kwargs)
    try:
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=trainable and not merge)
    except Exception as exc:  # noqa: BLE001 — an adapter that does not fit its base becomes one sentence
        raise ModelLoadError(
            f"could not apply adapter '{folder}' to base model '{base_folder}': {_first_line(exc)}."
        ) from None
    return model.merge_and_unload() if merge else model


# Classes that mean "exactly the pipeline in tokenizer.json".
_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _tokenizer_class(folder: Path, auto_class):
    """The generic fast tokenizer when the folder declares one, else ``AutoTokenizer``.

    Why: in transformers 5, ``AutoTokenizer`` picks the class from config.json's model_type, and a model-
    specific class (e.g. ``Qwen2Tokenizer``) rebuilds its own pre-tokenizer, ignoring the one saved in
    tokenizer.json — a tokenizer trained with another pre-tokenizer then splits text differently after a
    save/load. A folder that declares a generic class gets exactly what its tokenizer.json says.
    """
    from transformers import PreTrainedTokenizerFast

    config_file = folder / "tokenizer_config.json"
    if (folder / "tokenizer.json").is_file() and config_file.is_file():
        declared = _read_json(config_file, folder).get("tokenizer_class")
        if declared in _GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast
    return auto_class


def load_tokenizer(path: str | Path, *, base_model_path: str | Path | None = None):
    """Load the tokenizer saved in a local folder (an adapter folder without one falls back to its base).

    Ensures a pad token for training: if the tokenizer has none, its EOS token is used as pad (a padding
    *value* only — attention masks mark the real tokens). A tokenizer that already has a pad token is
    returned unchanged; the padding side is left as saved (collators choose it per use).
    """
    from transformers import AutoTokenizer

    folder = _require_folder(path)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        if is_adapter_folder(folder):
            return load_tokenizer(_adapter_base_path(folder, base_model_path))
        raise ModelLoadError(f"'{folder}' has no tokenizer files (tokenizer.json or tokenizer_config.json).")
    try:
        tokenizer = _tokenizer_class(folder, AutoTokenizer).from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # noqa: BLE001 — any tokenizer failure becomes one sentence
        raise ModelLoadError(f"could not load the tokenizer in '{folder}': {_first_line(exc)}.") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer in '{folder}' has neither a pad nor an EOS token, so batches cannot be padded."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
