"""``rlhfkit iterate``: iterative RLHF rounds on the built-in world, with the annotation app in the loop.

    rlhfkit iterate --config configs/iterate.yaml [key=value …]

Round r, as it reads (each step is skipped when its result is already on disk, so a re-run resumes):

1. **sample**   ``sampling.prompts_per_round`` world train prompts (a fresh family-balanced draw), two
                responses each from the current policy (round 1: the SFT policy) → ``candidates.jsonl``.
                Identical pairs, text the app cannot store (empty, NUL) and repeated pairs are dropped, counted.
2. **import**   into the app's SQLite database ``feedback.db`` of the run folder, kind ``pair``, batch
                ``round-r``, overlap ``labels.overlap``.
3. **label**    ``labels.source: simulated``: ``labels.annotators`` threads, each a user of the app driving
                its JSON API with a :class:`~rlhfkit.feedback.client.FeedbackClient`, answer as the world's
                simulated annotators (:mod:`rlhfkit.judges.simulated`, τ calibrated on round 1's pairs unless
                ``labels.tau`` is set). ``people``: the app is served on ``labels.host:labels.port`` and the
                round waits until every item has its votes, printing the progress. ``judge``: ``labels.judge``
                (gold, ai, reward:DIR) answers through the API as one annotator (RLAIF, overlap 1).
4. **export**   the round's batch with ``labels.min_votes`` (strict majority), prompts split by hash.
5. **reward**   a reward model trained **from the SFT model** on every preference of rounds 1…r, normalised
                on the current policy's samples (so PPO starts near score 0).
6. **PPO**      from the current policy, against the new reward model. The reference π_ref of the KL penalty
                is the policy the round starts from (``ppo_reference: round_start``, default): each round is a
                trust region around the policy that produced its comparisons — the labels describe that
                policy's outputs, and the penalty does not pull the policy back towards SFT by the KL already
                spent in earlier rounds (with ``sft`` it would, and later rounds could not move much). The
                total drift from SFT is then measured, not bounded: ``eval_vs_sft`` reports it.
7. **evaluate** the round's policy against the previous round's (round 1: SFT) with the gold judge on the
                world's eval prompts (``evaluate_policy_pair``), and from round 2 also against SFT.
   With ``method: dpo`` steps 5–6 are one: **DPO** on this round's preferences from the current policy, with
                the current policy as π_ref (on-policy DPO rounds; ``rlhfkit/iterate_dpo.py``).
8. **record**   ``round-r/round.json`` — written last: a round with it is finished and never redone — and
                ``rounds.json`` (every finished round's figures).

Folder: ``output_dir/{iterate.yaml, feedback.db, prompts_train.jsonl, rounds.json, round-r/}``; ``round-r/``
holds ``candidates.jsonl``, ``policy_samples.jsonl``, ``export/``, ``prefs.{train,eval}.jsonl``,
``reward.yaml`` + ``reward/`` (``reward/final``), ``ppo.yaml`` + ``ppo/`` (``ppo/final`` = the round's policy),
``eval_vs_previous.json``, ``eval_vs_sft.json``, ``round.json``. Details: docs/rlaif-and-iterate.md.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError, load_config, save_config
from rlhfkit.iterate_config import IterateConfig, check_resume_safe, stage_config

ROUND_MANIFEST = "round.json"
HEADLINE_PREFIXES = ("counts/", "gold/utility", "gold/goal", "win_rate/", "pairs/", "rates/", "kl/", "length/")


def say(message: str) -> None:
    from rlhfkit.engine.metrics_log import say as log

    log(f"iterate: {message}")


def write_json_atomically(path: Path, data: Any) -> None:
    from rlhfkit.evaluate.command import json_safe

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Run:
    """The run folder and the things every round shares (config, world, database URL)."""

    def __init__(self, cfg: IterateConfig) -> None:
        from rlhfkit.worlds import World

        self.cfg = cfg
        self.root = Path(cfg.output_dir)
        self.db_url = f"sqlite:///{(self.root / 'feedback.db').resolve()}"
        self.prompts_file = self.root / "prompts_train.jsonl"
        self.world = World.build(cfg.world_seed)

    def round_dir(self, r: int) -> Path:
        return self.root / f"round-{r}"

    def policy_of(self, r: int) -> str:
        """The policy after round r (round 0: ``start_path``, by default the SFT policy)."""
        if r == 0:
            return self.cfg.start_path or self.cfg.sft_path
        return str(self.round_dir(r) / self.cfg.method / "final")


# ---------------------------------------------------------------------------------------------- the command


def configure(parser) -> None:
    from rlhfkit.cli import add_stage_arguments

    add_stage_arguments(parser)


def main(args) -> int:
    cfg = load_config(IterateConfig, args.config, getattr(args, "overrides", []) or [])
    summaries = run_iterate(cfg)
    print(format_rounds(summaries))
    return 0


def run_iterate(cfg: IterateConfig) -> list[dict[str, Any]]:
    """Run (or resume) ``cfg.rounds`` rounds; returns every round's manifest (also in ``rounds.json``)."""
    from rlhfkit.data import write_rows
    from rlhfkit.feedback import commands

    check_sft_folder(cfg.sft_path)
    if cfg.start_path:
        check_sft_folder(cfg.start_path, "start_path")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    run = Run(cfg)
    run.root.mkdir(parents=True, exist_ok=True)
    check_resume_safe(cfg, run.root / "iterate.yaml")
    check_same_world(run)
    commands.init_db(run.db_url)
    if not run.prompts_file.exists():
        write_rows(run.prompts_file, [{"prompt": p.text} for p in run.world.train_prompts])
    summaries = []
    for r in range(1, cfg.rounds + 1):
        manifest_file = run.round_dir(r) / ROUND_MANIFEST
        if manifest_file.exists():
            say(f"round {r} already finished ({manifest_file}); skipping it")
            summaries.append(json.loads(manifest_file.read_text(encoding="utf-8")))
            continue
        summaries.append(run_round(run, r))
        write_json_atomically(run.root / "rounds.json", {"rounds": summaries})
    write_json_atomically(run.root / "rounds.json", {"rounds": summaries})
    return summaries


def world_fingerprint(world) -> str:
    """SHA-256 of the world's train and eval prompt texts: it changes whenever the world's definition does."""
    import hashlib

    digest = hashlib.sha256()
    for prompt in world.train_prompts + world.eval_prompts:
        digest.update(prompt.text.encode("utf-8") + b"\n")
    return digest.hexdigest()


def check_same_world(run: Run) -> None:
    """A run's rounds must all come from one world: its prompts, gold judge and annotators. Record the world's
    fingerprint on the first start; refuse to resume a run made with another (e.g. after an rlhfkit upgrade)."""
    path, now = run.root / "world.json", world_fingerprint(run.world)
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
        if before != now:
            raise ConfigError(f"{run.root} was started with another version of the built-in world (seed "
                              f"{run.cfg.world_seed}: its prompts differ); its rounds cannot be continued — use a "
                              "new output_dir")
        return
    write_json_atomically(path, {"world_seed": run.cfg.world_seed, "fingerprint": now,
                                 "train_prompts": len(run.world.train_prompts)})


def is_model_folder(path: str | Path) -> bool:
    """A saved model: a standard folder or a PEFT adapter folder (both are written atomically, whole)."""
    return (Path(path) / "config.json").exists() or (Path(path) / "adapter_config.json").exists()


def check_sft_folder(path: str, key: str = "sft_path") -> None:
    if not is_model_folder(path):
        raise ConfigError(f"{key}: {path} is not a model folder. Train the SFT policy first (rlhfkit world "
                          "build, then rlhfkit sft --config configs/sft.yaml), or point sft_path at yours.")


# ---------------------------------------------------------------------------------------------- one round


def run_round(run: Run, r: int) -> dict[str, Any]:
    cfg, out = run.cfg, run.round_dir(r)
    out.mkdir(parents=True, exist_ok=True)
    start_policy, seconds = run.policy_of(r - 1), {}
    say(f"round {r}: starting from {start_policy}")

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - t0, 1)
        gc.collect()
        return result

    sampling = timed("sample", sample_candidates, run, r, start_policy)
    imported = timed("import", import_candidates, run, r)
    labelled = timed("label", collect_labels, run, r)
    labels = timed("export", export_labels, run, r)
    if cfg.method == "dpo":
        from rlhfkit.iterate_dpo import train_round_dpo

        training = {"method": "dpo", "dpo": timed("dpo", train_round_dpo, run, r, start_policy)}
    else:
        reward = timed("reward", train_round_reward, run, r)
        training = {"reward_model": reward["path"], "ppo_reference": cfg.ppo_reference, "reward": reward,
                    "ppo": timed("ppo", train_round_policy, run, r, start_policy)}
    evaluation = timed("eval", evaluate_round, run, r)
    manifest = {"round": r, "batch": f"round-{r}", "start_policy": start_policy, "policy": run.policy_of(r),
                "sampling": sampling, "import": imported, "labels": {**labelled, **labels}, **training,
                **evaluation, "seconds": {**seconds, "total": round(sum(seconds.values()), 1)}}
    write_json_atomically(out / ROUND_MANIFEST, manifest)
    say(f"round {r} finished in {manifest['seconds']['total']:.0f} s: {format_round(manifest)}")
    return manifest


def sample_candidates(run: Run, r: int, policy_path: str) -> dict[str, Any]:
    """Two responses per drawn prompt → ``candidates.jsonl`` (the app's rows) and ``policy_samples.jsonl``."""
    from rlhfkit.data import write_rows
    from rlhfkit.feedback.importer import MAX_TEXT_CHARS
    from rlhfkit.feedback.textcheck import TextError, check_text

    out = run.round_dir(r)
    counts_file = out / "candidates.counts.json"
    if counts_file.exists() and (out / "candidates.jsonl").exists():
        return json.loads(counts_file.read_text(encoding="utf-8"))
    cfg = run.cfg
    prompts = [p.text for p in run.world.sample_prompts(cfg.sampling.prompts_per_round,
                                                        seed=f"iterate-{cfg.seed}-round-{r}")]
    texts = sample_texts(policy_path, prompts, 2, seed=1000 * cfg.seed + r, max_new_tokens=cfg.sampling.max_new_tokens,
                         temperature=cfg.sampling.temperature, batch_size=cfg.sampling.batch_size)
    counts: Counter[str] = Counter(prompts=len(prompts))
    candidates, samples, seen = [], [], set()

    def storable(text: str) -> bool:
        try:
            check_text(text, max_chars=MAX_TEXT_CHARS)
            return True
        except TextError:
            return False

    for prompt, (a, b) in zip(prompts, texts):
        samples += [{"prompt": prompt, "response": t} for t in (a, b) if storable(t)]
        key = (prompt, frozenset((" ".join(a.split()), " ".join(b.split()))))
        if not (storable(a) and storable(b)):
            counts["dropped_unstorable"] += 1
        elif len(key[1]) == 1:
            counts["dropped_identical"] += 1
        elif key in seen:
            counts["dropped_repeated"] += 1
        else:
            seen.add(key)
            candidates.append({"prompt": prompt, "responses": [a, b]})
    counts["candidates"] = len(candidates)
    if not candidates:
        raise ConfigError(f"round {r}: every sampled pair was identical or empty ({dict(counts)}); the policy "
                          f"{policy_path} has collapsed — sample more prompts or raise sampling.temperature")
    write_rows(out / "policy_samples.jsonl", samples)
    write_rows(out / "candidates.jsonl", candidates)
    write_json_atomically(counts_file, dict(counts))  # last: the step is done
    return dict(counts)


def sample_texts(model_path: str, prompts: list[str], n: int, **kwargs) -> list[list[str]]:
    """``n`` sampled responses per prompt from the policy folder ``model_path``."""
    from rlhfkit.evaluate.sampling import sample_policy
    from rlhfkit.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(model_path), load_tokenizer(model_path)
    return sample_policy(model, tokenizer, prompts, n, **kwargs).texts


def import_candidates(run: Run, r: int) -> dict[str, Any]:
    """Import the round's pairs as batch ``round-r`` (pairs already in the database are skipped, counted)."""
    from rlhfkit.feedback import commands

    rows = read_jsonl(run.round_dir(r) / "candidates.jsonl")
    report = commands.import_rows(run.db_url, rows, overlap=run.cfg.labels.overlap, on_duplicate="skip",
                                  batch=f"round-{r}", source=str(run.round_dir(r) / "candidates.jsonl"))
    return {"imported": report.imported, "already_in_database": len(report.skipped_duplicates)}


def annotator_tau(run: Run) -> float:
    """``labels.tau``, or τ calibrated on round 1's pairs (the SFT policy's samples); deterministic."""
    from rlhfkit.judges.simulated import DEFAULT_TAU, calibrated_tau

    cfg = run.cfg.labels
    if cfg.tau is not None:
        return cfg.tau
    pairs = [(row["prompt"], *row["responses"]) for row in read_jsonl(run.round_dir(1) / "candidates.jsonl")]
    calibration = calibrated_tau(run.world, pairs, tie_margin=cfg.tie_margin, length_bias=cfg.length_bias)
    if calibration is None:
        say(f"no round-1 pair has two different gold utilities, nothing to calibrate τ on: using {DEFAULT_TAU}")
        return DEFAULT_TAU
    return calibration.tau


# ---------------------------------------------------------------------------------------------- labels


def collect_labels(run: Run, r: int) -> dict[str, Any]:
    if run.cfg.labels.source == "people":
        return wait_for_people(run, r)
    if run.cfg.labels.source == "judge":
        return label_with_judge(run)
    return label_with_simulated_annotators(run, annotator_tau(run))


def label_with_simulated_annotators(run: Run, tau: float) -> dict[str, Any]:
    """``labels.annotators`` threads label every open item through the app's HTTP API, concurrently."""
    from rlhfkit.judges.simulated import annotator_panel, label_through_app

    cfg = run.cfg.labels
    panel = annotator_panel(run.world, cfg.annotators, tau=tau, length_bias=cfg.length_bias,
                            tie_margin=cfg.tie_margin, both_bad_below=cfg.both_bad_below)
    say(f"{len(panel)} simulated annotators labelling through the app (τ = {tau:.3g})")
    choices = label_through_app(run.db_url, panel)
    return {"source": "simulated", "tau": tau, "annotators": len(panel), "submitted_now": sum(choices.values()),
            "choices_now": dict(choices)}


def label_with_judge(run: Run) -> dict[str, Any]:
    """``labels.judge`` (gold, ai, reward:DIR, lm:DIR) labels every open pair through the app's HTTP API."""
    from rlhfkit.judges import make_judge
    from rlhfkit.judges.simulated import JudgeInApp, label_through_app
    from rlhfkit.judges.spec import ITERATE_JUDGES

    spec = run.cfg.labels.judge
    judge = make_judge(spec, world=run.world, valid=ITERATE_JUDGES)
    choices = label_through_app(run.db_url, [JudgeInApp(judge, "judge")])
    return {"source": "judge", "judge": spec, "submitted_now": sum(choices.values()), "choices_now": dict(choices)}


def wait_for_people(run: Run, r: int) -> dict[str, Any]:
    """Serve the app on ``labels.host:labels.port`` until no item lacks a vote (Ctrl-C stops; re-run resumes)."""
    from rlhfkit.feedback import commands

    cfg = run.cfg.labels
    db_path = run.db_url.removeprefix("sqlite:///")
    with commands.start_server(run.db_url, host=cfg.host, port=cfg.port) as server:
        write_json_atomically(run.root / "app.json", {"url": server.url, "db": db_path, "round": r})
        print(f"iterate: round {r}: the pairs wait for annotators at {server.url}/ — create accounts with\n"
              f"  rlhfkit annotate user NAME --db {db_path}\n"
              f"(each pair needs {cfg.overlap} votes); this round continues when every pair has them.", flush=True)
        while (left := commands.stats(run.db_url)["progress"]["slots_left"]) > 0:
            say(f"round {r}: {left} votes still wanted")
            time.sleep(cfg.poll_seconds)
    (run.root / "app.json").unlink(missing_ok=True)
    return {"source": "people"}


def export_labels(run: Run, r: int) -> dict[str, Any]:
    """Export batch ``round-r``, then gather the preferences of rounds 1…r into ``prefs.{train,eval}.jsonl``."""
    from rlhfkit.data import write_rows
    from rlhfkit.feedback import commands

    cfg, out = run.cfg.labels, run.round_dir(r)
    manifest = commands.export(run.db_url, out / "export", min_votes=cfg.min_votes, eval_fraction=cfg.eval_fraction,
                               batches=[f"round-{r}"])
    for split in ("train", "eval"):
        rows = [row for k in range(1, r + 1)
                for row in read_jsonl(run.round_dir(k) / "export" / f"preferences.{split}.jsonl")]
        write_rows(out / f"prefs.{split}.jsonl", rows)
    counts = manifest["counts"]
    this_round = (read_jsonl(out / "export" / "preferences.train.jsonl")
                  + read_jsonl(out / "export" / "preferences.eval.jsonl"))
    return {"items": counts.get("items", 0), "judgments": counts.get("judgments", 0),
            "preferences": len(this_round), "ties": counts.get("ties", 0),
            "below_min_votes": counts.get("pair_items_below_min_votes", 0),
            "without_majority": counts.get("pair_items_without_majority", 0),
            "preferences_so_far": len(read_jsonl(out / "prefs.train.jsonl")),
            "eval_preferences_so_far": len(read_jsonl(out / "prefs.eval.jsonl")),
            "gold_agreement": labels_gold_agreement(run, this_round)}


def labels_gold_agreement(run: Run, rows: list[dict[str, Any]]) -> float | None:
    """Share of exported preferences whose chosen response has the higher gold utility, among pairs whose
    gold utilities differ by more than 0.05 (the world's measure of label quality)."""
    from rlhfkit.worlds import GoldJudge

    gold = GoldJudge(run.world)
    margins = [gold.score(row["prompt"], row["chosen"]) - gold.score(row["prompt"], row["rejected"]) for row in rows]
    distinct = [m for m in margins if abs(m) > 0.05]
    return sum(m > 0 for m in distinct) / len(distinct) if distinct else None


# ---------------------------------------------------------------------------------------------- training


def last_logged(metrics_file: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The latest logged value of each of ``keys`` in a stage's ``metrics.jsonl``."""
    found: dict[str, Any] = {}
    for row in read_jsonl(metrics_file):
        found.update({k: row[k] for k in keys if k in row})
    return found


def train_round_reward(run: Run, r: int) -> dict[str, Any]:
    """A reward model from the SFT model on every preference so far (config saved as ``reward.yaml``)."""
    from rlhfkit.trainers.reward import train_reward

    out = run.round_dir(r)
    if not read_jsonl(out / "prefs.train.jsonl"):
        raise ConfigError(f"round {r}: no preference survived the export (every pair was a tie or below "
                          f"labels.min_votes={run.cfg.labels.min_votes}); see {out / 'export' / 'manifest.json'}")
    eval_file = out / "prefs.eval.jsonl"
    paths = {"model.path": run.cfg.sft_path, "data.train_file": str(out / "prefs.train.jsonl"),
             "data.eval_file": str(eval_file) if read_jsonl(eval_file) else None,
             "train.output_dir": str(out / "reward"), "normalize.reference_file": str(out / "policy_samples.jsonl"),
             "train.seed": run.cfg.seed + r}
    reward_cfg = stage_config(run.cfg, "reward", paths)
    save_config(reward_cfg, out / "reward.yaml")
    final = out / "reward" / "final"
    status = "already_complete" if is_model_folder(final) else train_reward(reward_cfg).status
    keys = ("train/loss", "reward/accuracy", "eval/reward/accuracy", "eval/reward/loss", "eval/reward/pairs")
    return {"path": str(final), "status": status, **last_logged(out / "reward" / "metrics.jsonl", keys)}


def train_round_policy(run: Run, r: int, start_policy: str) -> dict[str, Any]:
    """PPO from ``start_policy`` against this round's reward model (config saved as ``ppo.yaml``)."""
    from rlhfkit.trainers.ppo import train

    out, cfg = run.round_dir(r), run.cfg
    reference = "" if cfg.ppo_reference == "round_start" else cfg.sft_path  # "" = the starting policy, frozen
    paths = {"model.path": start_policy, "reference.path": reference,
             "reward_model.path": str(out / "reward" / "final"), "value_model.path": "",
             "data.train_file": str(run.prompts_file), "train.output_dir": str(out / "ppo"), "train.seed": cfg.seed + r}
    ppo_cfg = stage_config(cfg, "ppo", paths)
    save_config(ppo_cfg, out / "ppo.yaml")
    status = "already_complete"
    if not is_model_folder(run.policy_of(r)):
        status = train(ppo_cfg).status
    keys = ("objective/score", "objective/rm_score", "objective/kl", "objective/kl_coef", "response/eos_rate",
            "response/length_mean")
    return {"status": status, **last_logged(out / "ppo" / "metrics.jsonl", keys)}


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_round(run: Run, r: int) -> dict[str, Any]:
    """The round's policy against the previous round's (and SFT) by the gold judge; full reports on disk."""
    from rlhfkit.evaluate.protocol import evaluate_policy_pair
    from rlhfkit.evaluate.sampling import sample_policy, stream_seed
    from rlhfkit.judges import GoldJudge
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.worlds import FAMILIES

    cfg, out = run.cfg.eval, run.round_dir(r)
    baselines = {"previous": run.policy_of(r - 1)}
    if cfg.against_sft and run.policy_of(r - 1) != run.cfg.sft_path:
        baselines["sft"] = run.cfg.sft_path
    figures: dict[str, Any] = {}
    pending = {name: path for name, path in baselines.items() if not (out / f"eval_vs_{name}.json").exists()}
    if pending:
        gold = GoldJudge(run.world)
        prompts = [p.text for family in FAMILIES for p in run.world.prompts("eval", family)[: cfg.prompts_per_family]]
        policy, tokenizer = load_causal_lm(run.policy_of(r)), load_tokenizer(run.policy_of(r))
        common = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size}
        policy_samples = sample_policy(policy, tokenizer, prompts, cfg.samples, seed=stream_seed(cfg.seed, "policy"),
                                       **common)
        for name, path in pending.items():
            say(f"round {r}: evaluating against {name} ({path}) on {len(prompts)} eval prompts")
            metrics = evaluate_policy_pair(policy, load_causal_lm(path), tokenizer, gold, prompts, cfg.samples,
                                           cfg.seed, policy_samples=policy_samples, **common)
            write_json_atomically(out / f"eval_vs_{name}.json", {"baseline": path, "metrics": metrics})
    for name in baselines:
        metrics = json.loads((out / f"eval_vs_{name}.json").read_text(encoding="utf-8"))["metrics"]
        figures[f"eval_vs_{name}"] = {k: v for k, v in metrics.items() if k.startswith(HEADLINE_PREFIXES)}
    return figures


def _f(value: Any, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_round(m: dict[str, Any]) -> str:
    e = m.get("eval_vs_previous", {})
    if "dpo" in m:
        stage = (f"DPO ({m['dpo']['loss']}) eval accuracy {_f(m['dpo'].get('eval/rewards/accuracies'))}, "
                 f"chosen − ref {_f(m['dpo'].get('logps/chosen_minus_ref'), True)}")
    else:
        stage = (f"reward eval accuracy {_f(m['reward'].get('eval/reward/accuracy'))}, "
                 f"PPO KL {_f(m['ppo'].get('objective/kl'))}")
    return (f"{m['labels'].get('preferences', 0)} preferences, {stage}; vs previous: "
            f"Δ gold utility {_f(e.get('gold/utility_delta'), True)} [{_f(e.get('gold/utility_delta_ci_low'), True)}, "
            f"{_f(e.get('gold/utility_delta_ci_high'), True)}], goal-only decisive win rate "
            f"{_f(e.get('win_rate/goal_decisive'))}")


def format_rounds(summaries: list[dict[str, Any]]) -> str:
    lines = ["round  preferences  utility(prev→new)      Δ utility [95% CI]         goal-decisive  KL(vs prev)  seconds"]
    for m in summaries:
        e = m.get("eval_vs_previous", {})
        lines.append(f"{m['round']:>5}  {m['labels'].get('preferences_so_far', 0):>11}  "
                     f"{_f(e.get('gold/utility_b'), True)} → {_f(e.get('gold/utility_a'), True)}       "
                     f"{_f(e.get('gold/utility_delta'), True)} [{_f(e.get('gold/utility_delta_ci_low'), True)}, "
                     f"{_f(e.get('gold/utility_delta_ci_high'), True)}]   {_f(e.get('win_rate/goal_decisive')):>13}  "
                     f"{_f(e.get('kl/nats_per_seq')):>11}  {m['seconds']['total']:>7.0f}")
    return "\n".join(lines)
