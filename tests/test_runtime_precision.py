"""``mixed_precision: auto``: the matmul probe's decision, its log line, and the world cache's key."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rlhfkit.engine import runtime
from rlhfkit.engine.loop import TrainLoop
from rlhfkit.engine.runtime import BF16_MIN_SPEEDUP, choose_precision, decide, measure_matmul_rates
from rlhfkit.engine.train_config import TrainConfig
from rlhfkit.worlds import build
from rlhfkit.worlds.build import BUILD_FORMAT, BUILD_MANIFEST, WorldBuildConfig, load_built, world_fingerprint


def fake_rates(monkeypatch, fp32: float, bf16: float) -> list[str]:
    calls: list[str] = []

    def measure(device="cpu", **_):
        calls.append(device)
        return fp32, bf16, 0.01

    monkeypatch.setattr(runtime, "measure_matmul_rates", measure)
    return calls


def test_bf16_only_when_measurably_faster():
    assert decide(100.0, 100.0 * BF16_MIN_SPEEDUP) == "bf16"
    assert decide(100.0, 100.0 * BF16_MIN_SPEEDUP - 0.01) == "no"  # faster, but within the margin
    assert decide(100.0, 1.3) == "no"  # a CPU without native bf16 (AVX2 only): ~1 against ~60-80 GFLOP/s
    assert decide(100.0, 190.0) == "bf16"  # one with AMX / AVX512-BF16: about twice float32


@pytest.mark.parametrize(("fp32", "bf16", "picked"), [(60.0, 1.3, "no"), (200.0, 380.0, "bf16")])
def test_auto_picks_by_the_measured_rates_and_says_both(monkeypatch, fp32, bf16, picked):
    fake_rates(monkeypatch, fp32, bf16)
    choice = choose_precision("auto", "cpu")
    assert choice.precision == picked
    assert f"{bf16:.1f} GFLOP/s" in choice.reason and f"float32 {fp32:.1f}" in choice.reason
    assert choice.reason.startswith("bf16 autocast" if picked == "bf16" else "float32")
    assert choice.record()["mixed_precision"] == picked and choice.record()["bf16_gflops"] == bf16


def test_an_explicit_precision_is_never_probed(monkeypatch):
    calls = fake_rates(monkeypatch, 60.0, 1.3)
    assert choose_precision("bf16", "cpu").precision == "bf16"
    assert choose_precision("no", "cpu").precision == "no"
    assert calls == []
    with pytest.raises(ValueError, match="expected one of auto, no, bf16"):
        choose_precision("fp16", "cpu")


def test_the_real_probe_measures_both_and_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fp32, bf16, spent = measure_matmul_rates("cpu", budget_s=0.05)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert fp32 > 0 and bf16 > 0 and spent > 0


# ---- the world cache: the key holds the request; ``auto`` reuses whatever a build resolved to


def fake_build(cfg: WorldBuildConfig, resolved: str | None) -> None:
    """A finished build's manifest for ``cfg`` (``resolved`` None: a manifest from before ``auto``)."""
    root = cfg.folder()
    root.mkdir(parents=True)
    manifest = {"format": BUILD_FORMAT, "config": dataclasses.asdict(cfg), "world": world_fingerprint()}
    if resolved is not None:
        manifest["precision"] = {"mixed_precision": resolved}
    (root / BUILD_MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("built_as", "resolved"), [("auto", "no"), ("auto", "bf16"), ("bf16", None),
                                                    ("no", None)])
def test_world_cache_reuse_by_requested_and_resolved_precision(tmp_path, built_as, resolved):
    made = WorldBuildConfig(cache_dir=str(tmp_path), mixed_precision=built_as)
    fake_build(made, resolved)
    ran_in = resolved or built_as
    for asked in ("auto", "no", "bf16"):
        again = dataclasses.replace(made, mixed_precision=asked, threads=1)
        reused = load_built(again) is not None
        # auto takes any finished build (no probe, so the cache never flaps); no/bf16 only their own
        assert reused == (asked == "auto" or asked == ran_in), (asked, built_as, resolved)
    assert load_built(dataclasses.replace(made, mixed_precision="auto", lr=1e-3)) is None  # other settings


def test_a_killed_auto_build_resumes_in_its_checkpoints_precision(tmp_path, monkeypatch):
    calls = fake_rates(monkeypatch, 100.0, 400.0)  # the probe would now say bf16 ...
    pretrain = tmp_path / "pretrain"
    model = torch.nn.Linear(4, 1)
    data = [torch.randn(4) for _ in range(4)]
    TrainLoop(TrainConfig(output_dir=str(pretrain), max_steps=1, per_device_batch_size=2, progress_bar=False,
                          mixed_precision="no"), model).fit(data, torch.stack, lambda m, x: (m(x).pow(2).mean(), {}))
    cfg = WorldBuildConfig(cache_dir=str(tmp_path))
    choice = build._pretraining_precision(cfg, pretrain)
    assert choice.precision == "no" and "not probed again" in choice.reason and calls == []  # ... but it resumes
    assert build._pretraining_precision(cfg, tmp_path / "fresh").precision == "bf16" and calls == ["cpu"]


def test_resolving_auto_names_the_cached_builds_precision_else_the_probes(tmp_path, monkeypatch):
    calls = fake_rates(monkeypatch, 100.0, 400.0)  # the probe would say bf16
    fresh = WorldBuildConfig(cache_dir=str(tmp_path / "fresh"))
    assert build.resolve_precision(fresh).mixed_precision == "bf16" and calls == ["cpu"]
    cached = WorldBuildConfig(cache_dir=str(tmp_path / "cached"))
    fake_build(cached, "no")  # built under auto on a machine where float32 won
    resolved = build.resolve_precision(cached)
    assert resolved.mixed_precision == "no" and calls == ["cpu"]  # the build's, not probed again
    # what the demo then fingerprints and builds is explicit, and a later auto resolves to it again
    assert load_built(resolved) is not None and build.resolve_precision(cached) == resolved
    explicit = dataclasses.replace(fresh, mixed_precision="bf16")
    assert build.resolve_precision(explicit) is explicit and calls == ["cpu"]


# ---- train.mixed_precision=auto in any stage's loop: resolved once, recorded, kept on resume


def toy_run(output_dir, max_steps: int) -> TrainLoop:
    torch.manual_seed(0)
    loop = TrainLoop(TrainConfig(output_dir=str(output_dir), max_steps=max_steps, per_device_batch_size=2,
                                 lr_schedule="constant", progress_bar=False, mixed_precision="auto"),
                     torch.nn.Linear(4, 1))
    loop.fit([torch.randn(4) for _ in range(8)], torch.stack, lambda m, x: (m(x).pow(2).mean(), {}))
    return loop


def test_a_training_run_resolves_auto_once_and_its_resumption_keeps_it(tmp_path, monkeypatch, capsys):
    fake_rates(monkeypatch, 100.0, 400.0)  # bf16 wins here
    first = toy_run(tmp_path, max_steps=1)
    assert first.accelerator.mixed_precision == "bf16" and first.config.mixed_precision == "bf16"
    saved = json.loads((tmp_path / "checkpoint-1" / "config.json").read_text())["train"]["mixed_precision"]
    assert saved == "bf16"
    assert "precision: bf16 autocast: matmul under bf16 autocast 400.0 GFLOP/s vs float32 100.0" in capsys.readouterr().err
    calls = fake_rates(monkeypatch, 100.0, 1.0)  # the probe would now say float32 ...
    second = toy_run(tmp_path, max_steps=2)  # ... but the run resumes from checkpoint-1 in bf16, unrefused
    assert second.accelerator.mixed_precision == "bf16" and calls == [] and second.summary.step == 2
    assert "as checkpoint-1 that this run resumes" in capsys.readouterr().err
    assert toy_run(tmp_path / "fresh", max_steps=1).accelerator.mixed_precision == "no" and calls == ["cpu"]
