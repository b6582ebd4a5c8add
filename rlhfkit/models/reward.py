"""Reward and value models: the architecture's ``*ForSequenceClassification`` (num_labels=1), trunk from a causal LM.

Why a dedicated pad token. Plain transformers pools a sequence-classification model at "the rightmost
token whose id is not ``pad_token_id``". When pad == EOS (GPT-2, Llama and many real tokenizers ship no
pad token and are padded with EOS) a response that ends with EOS is scored one token early — on the
token *before* its EOS — and a batch padded with an id the config does not call pad is scored on
padding. So a reward model whose tokenizer has no pad token, or whose pad is its EOS, gets a new special
token ``<|rlhfkit_pad|>`` as pad: its id is the first id the tokenizer never produces (``len(tokenizer)``),
the embedding matrix grows by one row only if that id does not already exist (many models pad their
vocabulary), the new row is zero. Config and saved tokenizer both name that pad, so a batch the saved
tokenizer right-pads is scored by plain ``AutoModelForSequenceClassification`` exactly where our
mask-based :func:`rlhfkit.models.heads.score_sequences` scores it (tested). Token ids of every other
token are unchanged, so a policy sharing the original tokenizer can hand its ids to the reward model
directly; our own scoring never looks at the pad id, only at the attention mask.

Plain transformers also computes positions without the mask, so for *left*-padded batches only our
scoring is padding-invariant on absolute-position models (GPT-2); right padding agrees with both.

Readout convention (written to every reward folder as ``rlhfkit_reward.json`` and a ``README.md``): the
score is read at the **final EOS** of the chat-templated conversation. ``apply_chat_template(…,
tokenize=False)`` may write text after it (ChatML ends ``<|im_end|>\n``); that text is cut first, as the
trainer cut it — read at the newline instead, scores of a trained model lose most of their margin.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from rlhfkit.models.heads import init_scalar_head, reward_head_init_std
from rlhfkit.models.load import (
    ModelLoadError,
    _require_folder,
    is_adapter_folder,
    load_causal_lm,
    load_pretrained_checked,
    load_tokenizer,
    read_model_config,
    set_attention,
)

DEDICATED_PAD_TOKEN = "<|rlhfkit_pad|>"
READOUT_FILE = "rlhfkit_reward.json"


def _eos_ids(tokenizer, config) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer is not None and tokenizer.eos_token_id is not None else set()
    config_eos = getattr(config.get_text_config(), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    return ids


def needs_dedicated_pad(tokenizer, config) -> bool:
    """True when the pad id is missing or is an EOS id (the case plain transformers mis-scores)."""
    pad = tokenizer.pad_token_id
    return pad is None or pad in _eos_ids(tokenizer, config)


def reward_tokenizer(tokenizer, config):
    """A copy of ``tokenizer`` whose pad token the reward model can safely compare ids with.

    Returned unchanged (a copy) if its pad is already distinct from EOS; otherwise a new special token
    :data:`DEDICATED_PAD_TOKEN` is added and made the pad token. The input tokenizer is never modified.
    """
    reward_tok = copy.deepcopy(tokenizer)
    if not needs_dedicated_pad(reward_tok, config):
        return reward_tok
    name = DEDICATED_PAD_TOKEN
    vocab = reward_tok.get_vocab()
    suffix = 0
    while name in vocab:  # never reuse a token the text could contain
        suffix += 1
        name = f"<|rlhfkit_pad_{suffix}|>"
    reward_tok.add_special_tokens({"pad_token": name})
    return reward_tok


def _owned_trunk(source, dtype):
    """(trunk, tokenizer or None) — loaded from a folder, or a deep copy of an in-memory model's trunk."""
    if isinstance(source, str | Path):
        causal = load_causal_lm(source, dtype, merge_adapter=True)
        return getattr(causal, causal.base_model_prefix), load_tokenizer(source)
    model = source
    if hasattr(model, "peft_config"):  # merge a copy, never the caller's model
        model = copy.deepcopy(model).merge_and_unload()
        return getattr(model, model.base_model_prefix), None
    return copy.deepcopy(getattr(model, model.base_model_prefix)), None


def _sequence_classifier_around(trunk, config):
    """The architecture's ``*ForSequenceClassification`` wrapping ``trunk`` (no second trunk allocated)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    prefix = model.base_model_prefix
    if type(getattr(model, prefix)) is not type(trunk):
        raise ValueError(
            f"{type(model).__name__} expects a {type(getattr(model, prefix)).__name__} trunk, "
            f"got {type(trunk).__name__}"
        )
    setattr(model, prefix, trunk)
    model.config = config  # one config object for the classifier and its trunk
    meta_head = model.score
    dtype = next(trunk.parameters()).dtype
    model.score = nn.Linear(meta_head.in_features, 1, bias=meta_head.bias is not None, dtype=dtype)
    leftovers = [name for name, p in model.named_parameters() if p.is_meta]
    leftovers += [name for name, b in model.named_buffers() if b.is_meta]
    if leftovers:
        raise ValueError(f"{type(model).__name__} has parameters outside trunk and score: {leftovers[:3]}")
    return model


def _ensure_embedding_row(trunk, pad_id: int) -> None:
    """Grow the trunk's embedding to hold ``pad_id`` (updating ``config.vocab_size``); new rows are zero."""
    rows = trunk.get_input_embeddings().weight.shape[0]
    if pad_id < rows:
        return
    trunk.resize_token_embeddings(pad_id + 1, mean_resizing=False)
    with torch.no_grad():
        trunk.get_input_embeddings().weight[rows:] = 0.0  # never attended to: the mask hides padding


def reward_model_from_causal_lm(source, tokenizer=None, *, head_init_std: float | None = None, seed: int = 0,
                                dtype=None):
    """Build a reward model (``*ForSequenceClassification``, num_labels=1) from a causal LM.

    ``source``: a local folder (model or adapter; an adapter is merged) or an in-memory causal LM (its
    trunk is deep-copied; the caller's model is not touched). ``tokenizer``: the causal LM's; loaded
    from the folder when ``source`` is a path, required for an in-memory model.
    The trunk keeps the SFT weights; the LM head is dropped; a new scalar head gets lm-human-preferences'
    init: weights ~ N(0, head_init_std²) with default ``1/√(d_model + 1)``, bias 0 where there is one,
    seeded by ``seed``. Returns ``(model, reward_tokenizer)`` in eval mode; save both (see
    :func:`save_scalar_model`): the tokenizer may carry the dedicated pad token (module docstring).
    """
    trunk, loaded_tokenizer = _owned_trunk(source, dtype)
    tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    if tokenizer is None:
        raise ValueError("reward_model_from_causal_lm needs the tokenizer of an in-memory model")
    config = trunk.config
    reward_tok = reward_tokenizer(tokenizer, config)
    config.num_labels = 1
    config.pad_token_id = reward_tok.pad_token_id
    config.get_text_config().pad_token_id = reward_tok.pad_token_id
    _ensure_embedding_row(trunk, reward_tok.pad_token_id)
    model = _sequence_classifier_around(trunk, config)
    hidden = config.get_text_config().hidden_size
    std = reward_head_init_std(hidden) if head_init_std is None else head_init_std
    init_scalar_head(model.score, std, seed)
    return model.eval(), reward_tok


def _check_scalar_folder(folder: Path, config) -> None:
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelLoadError(
            f"'{folder}' holds a {architectures[0] if architectures else config.model_type} model, not a "
            "reward/value model (*ForSequenceClassification); build one with reward_model_from_causal_lm."
        )
    if config.num_labels != 1:
        raise ModelLoadError(f"'{folder}' is a classifier with {config.num_labels} labels, not a scalar model (1).")


def load_reward_model(path: str | Path, dtype=None, *, attn_implementation: str | None = None, **kwargs):
    """Load a reward (or value) model folder saved by :func:`save_scalar_model`: ``(model, tokenizer)``.

    The model is in eval mode, with its stored score normalisation in ``model.config``. The tokenizer's
    pad token is aligned with the config's ``pad_token_id``. ``attn_implementation``: as for
    :func:`rlhfkit.models.load.load_causal_lm`. Raises :class:`ModelLoadError`.
    """
    from transformers import AutoModelForSequenceClassification

    folder = _require_folder(path)
    if is_adapter_folder(folder):
        raise ModelLoadError(f"'{folder}' is an adapter folder; reward and value models are saved merged.")
    config = read_model_config(folder)
    _check_scalar_folder(folder, config)
    model = set_attention(load_pretrained_checked(AutoModelForSequenceClassification, folder, dtype,
                                                  "reward model", **kwargs), attn_implementation)
    tokenizer = load_tokenizer(folder)
    pad = model.config.pad_token_id
    if pad is not None and tokenizer.pad_token_id != pad and pad < len(tokenizer):
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    return model, tokenizer


load_value_model = load_reward_model


def value_model_from_reward_model(source, dtype=None):
    """A value model initialised from a reward model (InstructGPT, Ouyang et al. 2022, §3.5).

    Same class and weights, including the stored score normalisation, so its initial per-token values
    (:func:`rlhfkit.models.heads.token_values`) are on the scale of the normalised scores. ``source``: a
    reward-model folder or an in-memory reward model (deep-copied). Returned in eval mode.
    """
    if isinstance(source, str | Path):
        return load_reward_model(source, dtype)[0]
    model = copy.deepcopy(source)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    return model.eval()


def save_scalar_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save a reward/value model (merged if PEFT-wrapped) and its tokenizer as a standard folder, with its
    readout convention (:func:`write_reward_card`) when the tokenizer is given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        write_reward_card(out, tokenizer, model)
    return out


def readout_convention(tokenizer, model) -> dict:
    """What a plain-transformers user needs to reproduce rlhfkit's score (see the module docstring)."""
    from rlhfkit.data.encode import special_prefix_ids
    from rlhfkit.models.heads import get_score_normalization

    gain, offset = get_score_normalization(model)
    prefix = special_prefix_ids(tokenizer)
    return {
        "score": "logits[:, 0] of AutoModelForSequenceClassification at the last token of the text",
        "text": "tokenizer.apply_chat_template(messages, tokenize=False), cut after its final eos_token",
        "eos_token": tokenizer.eos_token,
        "tokenize": "add_special_tokens=False" + (
            f"; start the ids with {tokenizer.convert_ids_to_tokens(prefix)} if the text does not" if prefix else ""),
        "chat_template_saved": bool(getattr(tokenizer, "chat_template", None)),
        "score_gain_left": gain,
        "score_offset": offset,
        "centred_score": "score + score_offset (what rlhfkit's PPO and reward judge use)"
                         + ("" if gain == 1.0 else " after multiplying the score by score_gain_left"),
    }


_CARD = """# Reward or value model (rlhfkit)

A scalar model (Bradley–Terry reward model, or a PPO value model): `AutoModelForSequenceClassification` with one label. Its score is read at
the **final EOS** of the chat-templated conversation; cut what the chat template writes after it:

```python
text = tok.apply_chat_template(messages, tokenize=False)   # messages: [..., {"role": "assistant", ...}]
text = text[: text.rindex(tok.eos_token) + len(tok.eos_token)]            # the score is read at the final EOS
score = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
```

with `tok = AutoTokenizer.from_pretrained(folder)` and
`model = AutoModelForSequenceClassification.from_pretrained(folder)`. The normalisation gain is folded
into the head; rlhfkit's centred score (the PPO reward) is `score + {offset!r}` (`score_offset` in
`rlhfkit_reward.json`, which records the whole convention).
"""


def write_reward_card(folder: str | Path, tokenizer, model) -> None:
    """``rlhfkit_reward.json`` (the readout convention) and a ``README.md`` with the plain-transformers snippet."""
    import json

    convention = readout_convention(tokenizer, model)
    out = Path(folder)
    (out / READOUT_FILE).write_text(json.dumps(convention, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_CARD.replace("{offset!r}", repr(convention["score_offset"])), encoding="utf-8")
