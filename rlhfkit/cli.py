"""``rlhfkit`` command line: one subcommand per stage, each a thin shell over a library function.

A subcommand's module is imported only when that subcommand runs, so ``rlhfkit --help`` is instant and
the annotation app never pulls in torch. Each module provides ``main(args) -> int | None`` and, when its
arguments are not the stage default (``--config`` plus ``key=value`` overrides), ``configure(parser)``.

User errors (bad config key, malformed data row, a folder that is not a model) and runs stopped on purpose
(a non-finite loss, out of memory) print one sentence and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Modules are imported lazily, only for the subcommand that runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlhfkit.demo", "the whole pipeline on the built-in world, evaluated, with a report"),
    "world": ("rlhfkit.worlds.commands", "build, inspect and judge with the built-in world"),
    "sft": ("rlhfkit.trainers.sft", "supervised fine-tuning on demonstrations"),
    "reward": ("rlhfkit.trainers.reward", "train a Bradley-Terry reward model on comparisons"),
    "dpo": ("rlhfkit.trainers.dpo", "direct preference optimisation (DPO, IPO, cDPO, RPO, ORPO, SimPO, KTO)"),
    "kto": ("rlhfkit.trainers.kto", "KTO from unpaired good/bad labels (rlhfkit dpo loss=kto)"),
    "ppo": ("rlhfkit.trainers.ppo", "PPO with a KL penalty against the frozen reference"),
    "grpo": ("rlhfkit.trainers.grpo", "GRPO: critic-free RL with group-normalised advantages, reward functions"),
    "rloo": ("rlhfkit.trainers.grpo", "RLOO: critic-free RL with a leave-one-out baseline, reward functions"),
    "eval": ("rlhfkit.evaluate.command", "evaluate a policy against a baseline with a judge"),
    "annotate": ("rlhfkit.feedback.commands", "the preference collection app"),
    "label": ("rlhfkit.judges.label", "RLAIF: label pairs with an AI judge"),
    "iterate": ("rlhfkit.iterate", "iterative RLHF rounds"),
    "frontier": ("rlhfkit.demo.frontier", "DPO and PPO β sweeps on a demo run: gold utility against KL"),
    "model": ("rlhfkit.models.gguf", "model files: import-gguf FILE OUT (a GGUF file -> a Hugging Face folder)"),
}


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every training stage takes: a YAML recipe and ``key=value`` overrides."""
    parser.add_argument("--config", "-c", help="YAML recipe (see configs/); key=value arguments override it")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")


def _top_level_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="rlhfkit",
        description="The whole RLHF recipe on any Hugging Face causal LM.",
        epilog=f"commands:\n{listing}\n\nrun `rlhfkit COMMAND --help` for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    from rlhfkit.errors import RunStopped, UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_level_parser()
        parser.add_argument("command", choices=sorted(COMMANDS), nargs="?")
        parser.parse_args(argv[:1])  # prints help / an unknown-command error and exits
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"rlhfkit {name}", description=help_text)
    configure = getattr(module, "configure", None)
    (configure or add_stage_arguments)(parser)
    args = parser.parse_args(rest)
    args.command = name
    from rlhfkit.engine.metrics_log import quiet_other_processes

    quiet_other_processes()  # under a launcher, the main process alone prints the setup and results
    try:
        result = module.main(args)
    except (UserError, RunStopped) as exc:
        print(f"rlhfkit {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhfkit {name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
