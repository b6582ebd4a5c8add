"""Atomic checkpoints: written whole or not at all, found again after any crash.

Recipe (see RELIABILITY.md): everything is written into ``.tmp-checkpoint-{step}`` beside the target (same
filesystem, so the rename is atomic), every file and folder is fsynced, a manifest listing every file with
its size and CRC-32 is written *last*, the folder is renamed to ``checkpoint-{step}`` with ``os.replace`` and
the parent folder is fsynced. A folder without a valid manifest, or whose files do not match it (a truncated
file), is incomplete: :func:`find_latest_checkpoint` skips it and falls back to the previous good one. At
resume it also compares every file's CRC-32 with the manifest, so a file damaged *after* it was written
(same size, other bytes) is caught and the previous checkpoint used instead. The CRC of the torch state
files (the optimizer state is most of a checkpoint) is computed on the bytes as they are written; the
model folder's files are read back once from the page cache, right after they were written.
Old checkpoints are deleted by :func:`rotate_checkpoints` only after the new one is complete.

Layout of ``checkpoint-{step}/``::

    model/                     save_pretrained folder (HF model, or the PEFT adapter), else model.safetensors
    optimizer.pt  scheduler.pt torch state dicts
    model_dcp/ optimizer_dcp/  instead of model/ and optimizer.pt under FSDP2: one shard file per process
                               (torch.distributed.checkpoint; see sharded_checkpoint.py)
    rng_rank{r}.pt             global RNG states of process r
    stage_rank{r}.pt           the stage's extra state (KL controller, sampling RNG …) of process r
    trainer_state.json         step, epoch, data position, counters
    config.json                the run's config, compared on resume
    manifest.json              written last; marks the checkpoint complete

Writing and loading a whole training checkpoint (every process's part) is in ``training_checkpoint.py``.

At the end of a run, after the stage's ``final/`` folder is complete, :func:`retire_checkpoints` deletes
the older checkpoints and the last one's ``optimizer.pt`` (unless ``train.keep_checkpoints_at_end``): the
manifest is rewritten first with ``"optimizer": false``, so a kill at any point leaves a loadable folder.
That last checkpoint still lets a re-run of the same command find the run complete and re-export it.

Imports torch, safetensors and the standard library; transformers/peft only when the model is one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = "rlhfkit-checkpoint/1"
MANIFEST = "manifest.json"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
TRASH_PREFIX = ".trash-checkpoint-"
_NAME = re.compile(r"^checkpoint-(\d+)$")
DAMAGED = "does not match its CRC-32"  # in checkpoint_problem's reason for a file whose bytes changed


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used to resume."""


# ----------------------------------------------------------------------------- writing


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def begin_checkpoint(output_dir: str | Path, step: int) -> Path:
    """Create (afresh) and return the temporary folder the files of checkpoint ``step`` go into."""
    tmp = Path(output_dir) / f"{TMP_PREFIX}{step}"
    if tmp.exists():  # left by a save that crashed
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def file_crc32(path: Path) -> str:
    """CRC-32 of a file's bytes, 8 hex digits: a cheap check against damage, not against an attacker."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


class _CRCWriter(io.RawIOBase):
    """A write-only file that keeps the CRC-32 of everything written through it."""

    def __init__(self, file: Any) -> None:
        self.file, self.crc = file, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.file.write(data)


# CRC-32 of the files written by save_torch, by absolute path; taken (and dropped) by write_manifest.
_WRITTEN_CRC: dict[str, str] = {}


def _manifest_files(tmp: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Every file's size and CRC-32 (from :func:`save_torch` when it wrote the file, else read back)."""
    files, crcs = {}, {}
    for folder, _dirs, names in os.walk(tmp):
        for name in names:
            path = Path(folder) / name
            rel = path.relative_to(tmp).as_posix()
            files[rel] = path.stat().st_size
            crcs[rel] = _WRITTEN_CRC.pop(str(path.resolve()), None) or file_crc32(path)
    return files, crcs


def write_manifest(tmp: Path, step: int, extra: dict[str, Any] | None = None) -> None:
    """Write ``manifest.json`` (every file's size and CRC-32) into ``tmp`` — the last file of a checkpoint."""
    files, crcs = _manifest_files(tmp)
    manifest = {"format": FORMAT, "step": step, "files": files, "crc32": crcs, **(extra or {})}
    _write_manifest_file(tmp, manifest)


def _write_manifest_file(folder: Path, manifest: dict[str, Any]) -> None:
    part = folder / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    _fsync_path(part)
    os.replace(part, folder / MANIFEST)


def commit_checkpoint(tmp: Path, step: int, extra: dict[str, Any] | None = None) -> Path:
    """fsync ``tmp``, write its manifest, rename it to ``checkpoint-{step}`` and fsync the parent."""
    _fsync_tree(tmp)
    write_manifest(tmp, step, extra)
    _fsync_path(tmp)
    final = tmp.parent / f"{PREFIX}{step}"
    if final.exists():  # an incomplete leftover with the same step: replace it (os.replace needs it gone)
        _discard(final)
    os.replace(tmp, final)
    _fsync_path(final.parent)
    return final


def _discard(path: Path) -> None:
    # Rename first, so a crash mid-delete leaves a ``.trash-`` folder, never a half-deleted checkpoint name.
    trash = path.parent / f"{TRASH_PREFIX}{path.name.removeprefix(PREFIX)}-{os.getpid()}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_folder_atomically(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a folder — a stage's final model — whole or not at all.

    ``write(tmp)`` fills a temporary sibling of ``target``; it is fsynced and renamed over ``target`` (an
    existing ``target`` is moved aside first and deleted after). If ``write`` raises, ``target`` is left as
    it was and the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_leftovers(target.parent, target.name)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".old-{target.name}-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a leftover of a dead one may be deleted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


_WRITER_LEFTOVER = re.compile(r"^\.(tmp|old)-(.+)-(\d+)$")


def remove_dead_writers_leftovers(folder: Path, name: str | None = None) -> list[Path]:
    """Delete what a kill during :func:`save_folder_atomically` left in ``folder`` (of target ``name``, or of
    any): ``.tmp-{name}-{pid}``, and ``.old-{name}-{pid}`` once ``name`` exists again (between the two
    renames it is the only copy, so it stays). Only leftovers of processes that no longer run."""
    removed = []
    for path in Path(folder).glob(".*-*"):
        match = _WRITER_LEFTOVER.match(path.name)
        if (match is None or not path.is_dir() or path.name.startswith((TMP_PREFIX, TRASH_PREFIX))
                or (name is not None and match.group(2) != name) or pid_is_alive(int(match.group(3)))):
            continue
        if match.group(1) == "old" and not (path.parent / match.group(2)).exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------- finding


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """All ``checkpoint-{step}`` folders in ``output_dir``, complete or not, by increasing step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def checkpoint_problem(path: Path, verify_content: bool = False) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted, or None when it is complete.

    Files are checked against the manifest by size; with ``verify_content`` also by CRC-32 (reads every
    byte: done once at resume, not at every rotation). Checkpoints written before checksums existed are
    checked by size only.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"manifest format is not {FORMAT}"
    if f"{PREFIX}{manifest.get('step')}" != path.name:
        return f"manifest names step {manifest.get('step')}"
    for name, size in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        if file.stat().st_size != size:
            return f"file {name} has {file.stat().st_size} bytes, the manifest says {size}"
    if verify_content:
        for name, expected in (manifest.get("crc32") or {}).items():
            if name in manifest["files"] and file_crc32(path / name) != expected:
                return f"file {name} {DAMAGED} in the manifest (changed after it was written)"
    return None


def find_latest_checkpoint(output_dir: str | Path, verify_content: bool = False,
                           ) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint (or None) and the newer incomplete ones skipped, with the reason.

    ``verify_content``: also compare every file's CRC-32 (at resume), so a damaged newest checkpoint is
    skipped like an incomplete one.
    """
    skipped = []
    for _step, path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path, verify_content)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- rotation


def rotate_checkpoints(output_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints, and incomplete ones older than the newest.

    Call only after the newest checkpoint is complete; ``protect`` is never deleted.
    """
    complete, incomplete = [], []
    for step, path in list_checkpoints(output_dir):
        (complete if checkpoint_problem(path) is None else incomplete).append((step, path))
    newest = complete[-1][0] if complete else None
    doomed = [path for _step, path in complete[:-keep]] if keep > 0 else []
    doomed += [path for step, path in incomplete if newest is not None and step < newest]
    removed = []
    for path in doomed:
        if protect is not None and path.resolve() == Path(protect).resolve():
            continue
        _discard(path)
        removed.append(path)
    return removed


OPTIMIZER = "optimizer.pt"
OPTIMIZER_SHARDS = "optimizer_dcp"  # the optimizer's shards under FSDP2 (sharded_checkpoint.OPTIMIZER_DIR)


def _is_optimizer_file(name: str) -> bool:
    return name == OPTIMIZER or name.startswith(OPTIMIZER_SHARDS + "/")


def has_optimizer_state(path: Path) -> bool:
    """False for a checkpoint whose optimizer state :func:`retire_checkpoints` removed."""
    return read_manifest(path).get("optimizer", True) is not False


def retire_checkpoints(output_dir: str | Path) -> list[Path]:
    """At the end of a run, once ``final/`` is complete: delete every checkpoint but the newest complete
    one, then that one's optimizer state. Returns the deleted folders.

    The kept checkpoint's manifest is rewritten (atomically) *before* ``optimizer.pt`` is deleted, so a
    kill at any moment leaves a checkpoint that loads: with its optimizer state, or marked without it.
    Without it a re-run of the same command finds the run complete (and re-exports it from the weights);
    training further from it is refused by the loop.
    """
    latest, _ = find_latest_checkpoint(output_dir)
    if latest is None:
        return []
    removed = [path for _step, path in list_checkpoints(output_dir) if path != latest]
    for path in removed:
        _discard(path)
    manifest = read_manifest(latest)
    if manifest.get("optimizer", True) is not False:
        files = {k: v for k, v in manifest["files"].items() if not _is_optimizer_file(k)}
        crcs = {k: v for k, v in (manifest.get("crc32") or {}).items() if not _is_optimizer_file(k)}
        _write_manifest_file(latest, {**manifest, "files": files, "crc32": crcs, "optimizer": False})
        _fsync_path(latest)
    (latest / OPTIMIZER).unlink(missing_ok=True)
    shutil.rmtree(latest / OPTIMIZER_SHARDS, ignore_errors=True)
    _fsync_path(latest)
    return removed


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete ``.tmp-checkpoint-*`` and ``.trash-checkpoint-*`` folders left by a crashed run, and the
    temporary folders of a final export it was killed in (:func:`remove_dead_writers_leftovers`)."""
    root = Path(output_dir)
    stale = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((TMP_PREFIX, TRASH_PREFIX))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale + remove_dead_writers_leftovers(root)


# ----------------------------------------------------------------------------- contents


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save``, keeping the CRC-32 of the bytes as they are written (for the manifest)."""
    with open(path, "wb") as f:
        writer = _CRCWriter(f)
        torch.save(obj, writer)
    _WRITTEN_CRC[str(Path(path).resolve())] = f"{writer.crc:08x}"


def load_torch(path: Path) -> Any:
    # weights_only: a checkpoint is data; loading one never runs code.
    return torch.load(path, map_location="cpu", weights_only=True)


def model_format(model: torch.nn.Module) -> str:
    """``peft`` (adapter folder), ``transformers`` (save_pretrained folder) or ``state_dict`` (safetensors)."""
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        return "peft"
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return "transformers"
    return "state_dict"


TRAINABLE = "trainable.safetensors"


@contextlib.contextmanager
def _quiet_transformers():
    # transformers draws its own "Writing model shards" / "Loading weights" bars, which would break the
    # training bar at every checkpoint.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_model(model: torch.nn.Module, folder: Path, tokenizer: Any = None, for_resume: bool = True) -> str:
    """Save ``model`` (unwrapped) into ``folder`` as a standard Hugging Face folder when it is one.

    A PEFT model saves its adapter folder (the frozen base is rebuilt by the stage on resume) plus, when
    ``for_resume``, ``trainable.safetensors``: every trainable parameter by name, which resume loads (exact
    whatever PEFT does or does not put in the adapter). A transformers model saves its ``save_pretrained``
    folder, which plain transformers loads; anything else a ``model.safetensors`` state dict (shared
    tensors stored once). Returns the format name.
    """
    from safetensors.torch import save_file

    kind = model_format(model)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "state_dict":
        from safetensors.torch import save_model as save_safetensors

        save_safetensors(model, str(folder / "model.safetensors"))
        return kind
    with _quiet_transformers():
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if kind == "peft" and for_resume:
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(folder / TRAINABLE))
    return kind


def load_model(model: torch.nn.Module, folder: Path, kind: str) -> None:
    """Load the weights saved by :func:`save_model` into the existing ``model`` (parameters stay the same
    objects, so an optimizer built on them stays valid)."""
    if model_format(model) != kind:
        raise CheckpointError(
            f"{folder} holds a {kind} model but the model being trained is {model_format(model)}; "
            "resume with the same model setup (e.g. lora.enabled) as the checkpoint"
        )
    if kind == "state_dict":
        from safetensors.torch import load_model as load_safetensors

        load_safetensors(model, str(folder / "model.safetensors"), strict=True)
    elif kind == "peft":
        from safetensors.torch import load_file

        saved = load_file(str(folder / TRAINABLE))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if saved.keys() != params.keys():
            differ = sorted(saved.keys() ^ params.keys())[:3]
            raise CheckpointError(f"{folder}: the trainable parameters differ from the model's ({differ}); "
                                  "resume with the same LoRA settings as the checkpoint")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])
    else:
        # from_pretrained knows the key renamings and tied weights of every architecture; copying its
        # state dict into the live model keeps the optimizer's parameter objects.
        with _quiet_transformers():
            saved = type(model).from_pretrained(folder)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str), encoding="utf-8")


def write_json_atomically(path: Path, data: Any) -> None:
    """:func:`write_json` into a temporary sibling, then ``os.replace``: readers see the old or the new file."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    write_json(part, data)
    os.replace(part, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
