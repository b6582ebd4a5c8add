"""`rlhfkit annotate ...` through the real command line entry point, and the no-torch promise."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from feedback_helpers import fast_scrypt, pair_rows, write_jsonl  # noqa: F401  (fast_scrypt: autouse fixture)

from rlhfkit.cli import main as rlhfkit_main


def test_annotate_cli_init_user_import_stats_export(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "f.db")
    assert rlhfkit_main(["annotate", "init", "--db", db]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("boss-password-1\n"))
    assert rlhfkit_main(["annotate", "user", "boss", "--role", "admin", "--db", db, "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert rlhfkit_main(["annotate", "user", "weak", "--db", db, "--password-stdin"]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    candidates = write_jsonl(tmp_path / "c.jsonl", pair_rows(3))
    assert rlhfkit_main(["annotate", "import", str(candidates), "--db", db, "--overlap", "1", "--batch", "r1"]) == 0
    assert "imported 3 items" in capsys.readouterr().out
    assert rlhfkit_main(["annotate", "import", str(candidates), "--db", db]) == 2  # duplicates
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "c.jsonl, line 3, field (row)" in err
    assert rlhfkit_main(["annotate", "stats", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["progress"]["items"] == 3
    assert rlhfkit_main(["annotate", "export", str(tmp_path / "out"), "--db", db, "--min-votes", "1"]) == 0
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert rlhfkit_main(["annotate", "stats", "--db", str(tmp_path / "missing.db")]) == 2
    assert "annotate init" in capsys.readouterr().err and not (tmp_path / "missing.db").exists()


def test_the_feedback_package_never_imports_torch():
    code = ("import sys, rlhfkit.feedback.commands, rlhfkit.feedback.server, rlhfkit.feedback.client, "
            "rlhfkit.feedback.cli; heavy = [m for m in ('torch', 'transformers', 'numpy', 'datasets') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
