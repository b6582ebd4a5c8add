"""Under a launcher every process runs the same setup; only the main one prints it (rank from ``RANK``)."""

from __future__ import annotations

import sys

from rlhfkit.engine.metrics_log import is_main_process, quiet_other_processes, say


def test_say_speaks_only_on_the_main_process(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()
    say("alone")
    monkeypatch.setenv("RANK", "0")
    say("rank zero")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    say("rank one")
    assert capsys.readouterr().err.splitlines() == ["alone", "rank zero"]


def test_other_processes_lose_stdout_but_keep_stderr(monkeypatch, capsys):
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    monkeypatch.setenv("RANK", "0")
    quiet_other_processes()
    print("main result")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    quiet_other_processes()
    print("duplicate result")
    print("an error on rank 1", file=sys.stderr)
    captured = capsys.readouterr()
    quiet = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(verbosity)  # the process-wide settings, as they were
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    assert captured.out == "main result\n" and captured.err == "an error on rank 1\n"
    assert quiet == (hf_logging.ERROR, False)  # transformers' bars and info lines off on rank 1
