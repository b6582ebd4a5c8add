"""``rollout.old_logprobs=sampling`` is refused outside float32 (issue 17, item 5), and the reason holds: under bf16
the sampling pass's log-probs are not the training forward's, so PPO's first ratio would not be 1."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.models.tiny import tiny_config
from rlhfkit.rollout.generate import generate, left_pad
from rlhfkit.trainers.ppo_config import PPOConfig

# per_device_batch_size given: any train.* override without a YAML resets PPO's train defaults (a separate bug)
BASE = ["model.path=m", "reward_model.path=r", "data.train_file=p.jsonl", "train.per_device_batch_size=16",
        "rollout.old_logprobs=sampling"]


# half-precision weights only as LoRA's frozen base: full fine-tuning in them is refused on its own
# (tests/test_trained_dtype.py)
@pytest.mark.parametrize("precision", [["train.mixed_precision=bf16"], ["model.dtype=bfloat16", "lora.enabled=true"],
                                       ["model.dtype=float16", "lora.enabled=true"]])
def test_sampling_logprobs_are_refused_outside_float32(precision):
    with pytest.raises(ConfigError, match=r"rollout\.old_logprobs=sampling needs float32.*old_logprobs=forward"):
        load_config(PPOConfig, None, BASE + precision)
    load_config(PPOConfig, None, BASE)  # float32: allowed
    load_config(PPOConfig, None, [*BASE[:-1], *precision])  # the default (forward) runs in any precision


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_under_bf16_sampling_logprobs_are_not_the_forwards(arch):
    """The premise of the refusal: in float32 the two agree to float rounding, under bf16 autocast by far not."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    config = tiny_config(arch, "small", vocab_size=96, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    g = torch.Generator().manual_seed(10)
    prompts = [[1] + torch.randint(3, 96, (int(k),), generator=g).tolist() for k in torch.randint(2, 12, (8,), generator=g)]
    gaps = {}
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = generate(model, prompts, max_new_tokens=16, temperature=0.7, eos_token_id=97, pad_token_id=0,
                           generator=torch.Generator().manual_seed(0), return_logprobs=True)
            ids, mask = out.sequences()
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        width = out.prompt_ids.shape[1]
        forward = torch.log_softmax(logits[:, width - 1 : -1].float() / 0.7, -1).gather(-1, out.response_ids[..., None])
        gaps[bf16] = float((out.logprobs - forward[..., 0])[out.response_mask.bool()].abs().max())
    assert gaps[False] < 2e-4 and gaps[True] > 0.05, gaps
    assert left_pad(prompts, 0)[1].sum(1).unique().numel() > 2  # ragged prompts: padding in play
