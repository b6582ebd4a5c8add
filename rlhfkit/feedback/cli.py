"""`rlhfkit annotate init|user|import|serve|stats|export`: argument parsing over feedback.commands.

Passwords are never command-line arguments (other users of the machine can read those from
the process list): they are asked for twice on a terminal, or read from stdin with
`--password-stdin`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from rlhfkit.errors import UserError
from rlhfkit.feedback import commands
from rlhfkit.feedback.config import DEFAULT_DB_URL
from rlhfkit.feedback.db import SchemaError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", default=DEFAULT_DB_URL,
                       help=f"database URL or SQLite file (default {DEFAULT_DB_URL}); postgresql://... for a team")
        return p

    action("init", "create the database tables (no user is created)")
    p = action("user", "create a user, or (de)activate one")
    p.add_argument("name")
    p.add_argument("--role", choices=("annotator", "admin"), default="annotator")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--deactivate", action="store_true", help="deactivate an existing user (ends their sessions)")
    p.add_argument("--activate", action="store_true", help="re-activate an existing user")
    p = action("import", "import candidates (JSON Lines: prompt, responses, optional kind/gold/id)")
    p.add_argument("path")
    p.add_argument("--overlap", type=int, default=2, help="annotators per item (default 2)")
    p.add_argument("--gold-overlap", type=int, default=None, help="annotators per gold item (default: --overlap)")
    p.add_argument("--skip-duplicates", action="store_true", help="skip rows already imported instead of failing")
    p.add_argument("--batch", default=None, help="name this import (e.g. round-2) so an export can select it")
    p = action("serve", "run the web app (binds 127.0.0.1 unless --host says otherwise)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--export-dir", default=None, help="folder the admin page's export button writes to")
    p.add_argument("--lease-minutes", type=float, default=30.0, help="how long an item stays reserved")
    p.add_argument("--secure-cookies", action="store_true", help="Secure cookies; required behind https")
    p = action("stats", "progress, agreement and per-annotator statistics")
    p.add_argument("--json", action="store_true", help="print the full statistics as JSON")
    p = action("export", "write training files (preferences, rankings, SFT) and a manifest, atomically")
    p.add_argument("out_dir")
    p.add_argument("--min-votes", type=int, default=2)
    p.add_argument("--eval-fraction", type=float, default=0.0)
    p.add_argument("--include-gold", action="store_true")
    p.add_argument("--rankings", choices=("borda", "each"), default="borda")
    p.add_argument("--batch", action="append", default=None, help="only items of this import batch (repeatable)")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise UserError("The two passwords differ; nothing was changed.")
    return first


def print_stats(stats: dict[str, Any]) -> None:
    p = stats["progress"]
    print(f"{p['items']} items ({p['gold_items']} gold), {p['judgments']} judgments, {p['complete']} complete, "
          f"{p['slots_left']} judgments still wanted, {p['active_leases']} active leases")
    a = stats["agreement"]
    print(f"agreement on pairs: {a['percent_agreement']}, Krippendorff's alpha: {a['krippendorff_alpha']}, "
          f"mean Kendall's tau on rankings: {a['mean_kendall_tau']}")
    for row in a["pairs"]:
        print(f"  {row['raters'][0]} / {row['raters'][1]}: n={row['n']} agreement={row['percent_agreement']} "
              f"kappa={row['cohens_kappa']}")
    for name, row in stats["annotators"].items():
        print(f"{name}: {row['judgments']} judgments, gold accuracy {row['gold_accuracy']} "
              f"(n={row['gold_answered']}), left-choice rate {row['left_choice_rate']}, tie rate {row['tie_rate']}, "
              f"both-bad rate {row['both_bad_rate']}, median {row['median_seconds']} s")


def main(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, SchemaError) as err:  # ImportValidationError is a ValueError too
        if isinstance(err, UserError):
            raise
        raise UserError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    if args.action == "init":
        created = commands.init_db(args.db)
        print(f"{'created' if created else 'already initialised'}: {args.db}; add users with `rlhfkit annotate user`")
    elif args.action == "user":
        if args.activate or args.deactivate:
            commands.set_user_active(args.db, args.name, active=args.activate)
            print(f"{args.name} {'activated' if args.activate else 'deactivated'}")
        else:
            user = commands.create_user(args.db, args.name, args.role, _password(args))
            print(f"created {user.role} {user.name}")
    elif args.action == "import":
        report = commands.import_items(args.db, args.path, args.overlap, gold_overlap=args.gold_overlap,
                                       on_duplicate="skip" if args.skip_duplicates else "error", batch=args.batch)
        print(f"imported {report.imported} items {report.by_kind} ({report.gold} gold) as batch {report.batch}; "
              f"{len(report.skipped_duplicates)} duplicates skipped")
        for note in report.invisible[:20]:
            print(f"  note: {note}")
    elif args.action == "serve":
        commands.serve(args.db, args.host, args.port, export_dir=args.export_dir,
                       lease_seconds=args.lease_minutes * 60, secure_cookies=args.secure_cookies)
    elif args.action == "stats":
        stats = commands.stats(args.db)
        print(json.dumps(stats, indent=2)) if args.json else print_stats(stats)
    elif args.action == "export":
        manifest = commands.export(args.db, args.out_dir, min_votes=args.min_votes,
                                   eval_fraction=args.eval_fraction, include_gold=args.include_gold,
                                   ranking_aggregate=args.rankings, batches=args.batch)
        rows = ", ".join(f"{name} {info['rows']}" for name, info in manifest["files"].items())
        print(f"wrote {args.out_dir}: {rows}")
    return 0
