"""Atomic, verified checkpoints: keep the last K and the best M, fall back past a damaged one.

A checkpoint is written under a temporary name, fsynced, and renamed into place, so a crash
mid-write never leaves a file that looks complete. Its SHA-256, computed while writing,
is stored beside it (``ckpt-<step>.pt.sha256``, the format ``sha256sum -c`` reads) and in
``index.json``; loading verifies it, because ``torch.load`` does not check the zip's CRCs
and would load a file with a damaged middle. Loading uses ``weights_only=True``: no
arbitrary object is ever unpickled. ``index.json`` records each checkpoint's step, epoch
and validation metrics for choosing the best one; a damaged index is rebuilt from the files.
The temporary files of a write that was killed (SIGKILL) are removed by the next writer of
those names: training before its first checkpoint, ``framework.average`` when it starts.

Sharded runs (``trainer.strategy=fsdp``) keep the model and the optimizer out of the file:
every rank writes its own shards of them with ``torch.distributed.checkpoint`` into a new
folder ``ckpt-<step>.<tag>.dcp`` beside it (:meth:`Checkpointer.save_shards`), and
``ckpt-<step>.pt``, written last, records each of the folder's files with its SHA-256 and
holds a :class:`Shards` reference in those parts' places. So a checkpoint is complete when
its ``.pt`` exists, and verified as a whole. A sharded part is read back either into a
sharded model at any world size (:meth:`Shards.load_into`, each rank reading what it
holds) or whole (:meth:`Shards.read`, one process: evaluation, export, averaging, a run
that continues without sharding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from framework.errors import UserError
from framework.files import remove_leftovers, sha256_of, temporary_path, write_atomic

log = logging.getLogger(__name__)
CKPT_NAME = re.compile(r"ckpt-(\d+)\.pt$")
SHARDS_NAME = re.compile(r"ckpt-(\d+)\.[0-9a-f]{8}\.dcp$")  # a sharded checkpoint's model and optimizer
SHARDS = "shards"  # the key of ckpt-*.pt that lists the folder's files
SHARDED = "sharded"  # a part's value in ckpt-*.pt when its state is in the folder: {"sharded": <its key there>}
AVERAGED = "averaged.pt"  # what framework.average writes beside the checkpoints


def written_by_training(name: str) -> bool:
    """Checkpoints, their checksums and the index: the files of a checkpoint folder training writes."""
    return name == "index.json" or CKPT_NAME.fullmatch(name.removesuffix(".sha256")) is not None or \
        SHARDS_NAME.fullmatch(name) is not None


def written_by_average(name: str) -> bool:
    return name in (AVERAGED, AVERAGED + ".sha256")


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged or not one of ours."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, no permission); earlier ones are intact."""


@dataclass(frozen=True)
class Shards:
    """A sharded part of a checkpoint: the key ``key`` of the ``torch.distributed.checkpoint``
    folder ``folder`` (verified when the checkpoint was loaded)."""

    folder: Path
    key: str

    def read(self) -> Any:
        """The whole state, in this process alone (whatever the number of ranks that wrote it)."""
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        # what torch.distributed.checkpoint.format_utils.dcp_to_torch_save reads, for one key
        state: dict[str, Any] = {}
        try:
            _load_state_dict(state, storage_reader=FileSystemReader(self.folder),
                             planner=_EmptyStateDictLoadPlanner(keys={self.key}), no_dist=True)
        except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
            raise CheckpointError(f"cannot read {self.key} from {self.folder}: {_dcp_failure(exc)}") from None
        if self.key not in state:
            raise CheckpointError(f"{self.folder} holds no {self.key}: the checkpoint and its shards come from "
                                  "different writes")
        return state[self.key]

    def load_into(self, template: Any) -> None:
        """Fills ``template`` (a state dict of this rank's shards, e.g. from
        ``get_model_state_dict``) in place; collective when a process group is up."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            dcp.load({self.key: template}, checkpoint_id=str(self.folder))
        except CheckpointException as exc:  # a BaseException: it would pass every handler
            raise CheckpointError(f"cannot load {self.key} from {self.folder}: {_dcp_failure(exc)}") from None


def _dcp_failure(exc: BaseException) -> str:
    """What went wrong on each rank, in one line (torch.distributed.checkpoint gathers the
    ranks' errors, tracebacks included)."""
    failures = getattr(exc, "failures", None) or {0: (exc, None)}
    said = []
    for rank, (error, _) in sorted(failures.items()):
        text = (str(error).strip().splitlines() or [""])[0]
        if "unexpected pos" in text:  # torch's zip writer hides the OS error (ENOSPC)
            text = "a write failed part-way, as on a full disk"
        said.append(f"rank {rank}: {type(error).__name__}: {text}")
    return "; ".join(said)


def materialize(state: dict[str, Any], parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``state`` with its :class:`Shards` parts read whole (only those named in ``parts``, the
    others left out): a checkpoint state that stands alone."""
    return {k: v.read() if isinstance(v, Shards) else v for k, v in state.items()
            if k != SHARDS and (parts is None or k in parts or not isinstance(v, Shards))}


class _HashingWriter:
    """A file wrapper that hashes what passes through and remembers the first OS error (torch's
    zip writer reports a failed write as 'unexpected pos', hiding the cause)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            n = self.raw.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.sha256.update(data)
        return n

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def write_hashed(path: Path, write: Callable[[BinaryIO], Any], before_rename: Callable[[str], None] | None = None,
                 expected_bytes: int | None = None) -> str:
    """:func:`framework.files.write_atomic`, hashing what is written; returns the SHA-256
    (hex), which ``before_rename`` receives first. An OS error (disk full, permissions)
    becomes a one-line :class:`CheckpointWriteError`."""
    writer: _HashingWriter | None = None

    def hashed(raw: BinaryIO) -> None:
        nonlocal writer
        writer = _HashingWriter(raw)
        write(writer)
        writer.flush()

    def sidecar() -> None:
        if before_rename is not None:
            before_rename(writer.sha256.hexdigest())

    try:
        write_atomic(path, hashed, sidecar)
    except BaseException as exc:
        cause = writer.error if writer is not None and writer.error is not None else exc
        if isinstance(cause, OSError):
            free = shutil.disk_usage(path.parent).free
            need = f"; about {_mb(expected_bytes)} needed" if expected_bytes else ""
            raise CheckpointWriteError(
                f"cannot write {path}: {cause.strerror or cause} ({_mb(free)} free on that disk{need}); "
                "earlier checkpoints are intact: free space or set trainer.checkpoint.keep_last lower, "
                "then resume with trainer.resume=auto"
            ) from None
        raise
    return writer.sha256.hexdigest()


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _valid_entry(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("file"), str) and CKPT_NAME.fullmatch(e["file"]) is not None
            and isinstance(e.get("step"), int) and isinstance(e.get("metrics", {}), dict))


class Checkpointer:
    """Writes ``ckpt-<step>.pt`` files into ``directory``.

    ``keep_last``: newest files kept; ``keep_best``: files with the best ``monitor``
    value (``mode`` min or max) kept as well.
    """

    def __init__(self, directory: str | Path, keep_last: int = 2, keep_best: int = 1, monitor: str = "loss",
                 mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"trainer.checkpoint.mode must be min or max, got {mode!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.monitor = monitor
        self.mode = mode
        self._leftovers_removed = False

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("ckpt-*.pt") if CKPT_NAME.fullmatch(p.name))

    def index(self) -> list[dict[str, Any]]:
        """Entries of the checkpoints on disk; files the index does not list (a crash between
        writing a checkpoint and its index) come in with no metrics."""
        entries: list[dict[str, Any]] = []
        if self.index_path.is_file():
            try:
                loaded = json.loads(self.index_path.read_text())
                if not isinstance(loaded, list) or not all(_valid_entry(e) for e in loaded):
                    raise ValueError("unexpected structure")
                entries = loaded
            except (ValueError, OSError) as exc:
                log.warning("%s is damaged (%s); rebuilding it from the checkpoint files", self.index_path, exc)
        listed = {e["file"] for e in entries}
        entries = [e for e in entries if (self.directory / e["file"]).is_file()]
        for p in self._files():
            if p.name not in listed:
                entries.append({"file": p.name, "step": int(CKPT_NAME.fullmatch(p.name).group(1)), "metrics": {}})
        return sorted(entries, key=lambda e: e["step"])

    def save(self, state: dict[str, Any], step: int, metrics: dict[str, float] | None = None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._leftovers_removed:  # training holds the run lock: no other process writes these names
            remove_leftovers(self.directory, written_by_training)
            self._leftovers_removed = True
        path = self.directory / f"ckpt-{step:09d}.pt"
        previous = self._files()
        digest = save_verified(state, path, previous[-1].stat().st_size if previous else None)
        entries = [e for e in self.index() if e["file"] != path.name]
        epoch = (state.get("progress") or {}).get("epoch", state.get("epoch"))
        entries.append({"file": path.name, "step": step, "epoch": epoch, "metrics": dict(metrics or {}),
                        "sha256": digest, "shards": (state.get(SHARDS) or {}).get("folder")})
        entries = self._prune(entries)
        write_hashed(self.index_path, lambda f: f.write(json.dumps(entries, indent=1).encode()))
        return path

    def save_shards(self, parts: dict[str, Any], step: int) -> dict[str, Any] | None:
        """Every rank's shards of ``parts`` (state dicts of DTensors) written with
        ``torch.distributed.checkpoint`` into a new folder ``ckpt-<step>.<tag>.dcp`` (call on
        every rank): under a temporary name, each rank hashing the files it wrote, then renamed
        into place by rank 0. A folder is never replaced: a checkpoint of the same step written
        again gets a new one, and its ``.pt`` switches to it. Returns, on rank 0, what
        ``ckpt-<step>.pt`` records of them (None elsewhere)."""
        import uuid

        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        from framework.trainer.distributed import broadcast_object, gather_objects, is_enabled

        rank = dist.get_rank() if is_enabled() else 0
        problem = None
        if rank == 0:
            folder = self.directory / f"ckpt-{step:09d}.{uuid.uuid4().hex[:8]}.dcp"
            try:
                temporary_path(folder).mkdir(parents=True)
            except OSError as exc:
                problem = exc.strerror or str(exc)
        # every rank learns the folder and whether rank 0 could make it (no rank left waiting)
        folder, problem = broadcast_object((folder if rank == 0 else None, problem))
        tmp = temporary_path(folder)
        if problem is None:
            try:
                dcp.save(parts, checkpoint_id=str(tmp))  # every rank's errors reach every rank
            except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
                problem = _dcp_failure(exc)
        if problem is None:
            try:
                mine: dict[str, str] = {p.name: sha256_of(p) for p in sorted(tmp.glob(f"__{rank}_*.distcp"))}
                if rank == 0:
                    mine[".metadata"] = sha256_of(tmp / ".metadata")
            except OSError as exc:
                mine = {"": f"rank {rank}: {exc.strerror or exc}"}
            hashed = gather_objects(mine)
            problem = "; ".join(part[""] for part in hashed if "" in part) or None
        if problem is not None:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(f"cannot write {folder}: {problem} ({_mb(shutil.disk_usage(self.directory).free)}"
                                       " free on that disk); earlier checkpoints are intact: free space or set "
                                       "trainer.checkpoint.keep_last lower, then resume with trainer.resume=auto")
        if rank != 0:
            return None
        os.replace(tmp, folder)
        return {"folder": folder.name, "sha256": {name: digest for part in hashed for name, digest in part.items()}}

    def ranked(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scored = [e for e in entries if self.monitor in e.get("metrics", {})]
        return sorted(scored, key=lambda e: e["metrics"][self.monitor], reverse=self.mode == "max")

    def _prune(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_step = sorted(entries, key=lambda e: e["step"])
        keep = {e["file"] for e in by_step[-self.keep_last :]} if self.keep_last else set()
        keep |= {e["file"] for e in self.ranked(entries)[: self.keep_best]}
        for e in entries:
            if e["file"] not in keep:
                (self.directory / e["file"]).unlink(missing_ok=True)
        for sidecar in self.directory.glob("ckpt-*.pt.sha256"):
            if sidecar.name.removesuffix(".sha256") not in keep:
                sidecar.unlink(missing_ok=True)
        # shard folders no kept checkpoint names: those pruned, replaced at the same step, or
        # written by a process killed before its .pt; a kept .pt that cannot say keeps its step's
        folders = [f for f in self.directory.glob("ckpt-*.dcp") if SHARDS_NAME.fullmatch(f.name)]
        live, unsure = set(), set()
        for e in entries if folders else []:
            if e["file"] in keep:
                named = e["shards"] if "shards" in e else _shards_named_by(self.directory / e["file"])
                (unsure.add(e["step"]) if named is False else live.add(named))
        for folder in folders:
            if folder.name not in live and int(SHARDS_NAME.fullmatch(folder.name).group(1)) not in unsure:
                shutil.rmtree(folder, ignore_errors=True)
        return [e for e in by_step if e["file"] in keep]

    def check_monitored(self, metrics: dict[str, float]) -> None:
        """Validation (``metrics``, keys ``valid_*``) must report the metric that picks the best checkpoint."""
        if f"valid_{self.monitor}" not in metrics:
            produced = ", ".join(k.removeprefix("valid_") for k in metrics if k != "valid_examples")
            raise UserError(f"trainer.checkpoint.monitor={self.monitor}: validation reports no such metric; it "
                            f"reports {produced}")

    def best(self) -> Path | None:
        ranked = self.ranked(self.index())
        return self.directory / ranked[0]["file"] if ranked else None

    def latest(self) -> Path | None:
        files = self._files()
        return files[-1] if files else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and verifies; damaged ones are reported and skipped."""
        for path in reversed(self._files()):
            try:
                return path, load_checkpoint(path, map_location)
            except CheckpointError as exc:
                log.warning("%s; trying the previous checkpoint", exc)
        return None

    def load_named(self, which: str, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
        """``best`` (:meth:`load_for_evaluation`), ``latest``, ``averaged`` (what
        ``framework.average`` wrote) or a checkpoint path. Raises when there is none."""
        if which == "best":
            return self.load_for_evaluation(map_location)
        if which == "latest":
            found = self.load_latest(map_location)
            if found is None:
                raise CheckpointError(f"no usable checkpoint in {self.directory}: nothing trained to use")
            return found
        path = self.directory / AVERAGED if which == "averaged" else Path(which)
        return path, load_checkpoint(path, map_location)

    def load_for_evaluation(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
        """The best checkpoint by the monitored metric; failing that (none scored, or damaged)
        the newest that loads, with a warning naming it. Raises when there is none: an
        evaluation must never score weights that were not trained."""
        ranked = [self.directory / e["file"] for e in self.ranked(self.index())]
        for i, path in enumerate(ranked[:1] + list(reversed(self._files()))):
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as exc:
                log.warning("%s; trying another checkpoint", exc)
                continue
            if i > 0 or not ranked:
                log.warning("no checkpoint of %s scored by valid %s: using the newest, %s (step %s)", self.directory,
                            self.monitor, path.name, state.get("step"))
            return path, state
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: nothing trained to evaluate; train the run first "
            "(or pass --checkpoint PATH)"
        )


def run_checkpointer(run_dir: str | Path, cfg: Any = None) -> Checkpointer:
    """The checkpoints of training run ``run_dir``, ranked as its training ranked them: by the
    ``trainer.checkpoint.monitor`` and ``mode`` of its config (``cfg``, else its config.yaml;
    the defaults without one)."""
    from omegaconf import OmegaConf

    from framework.config.schema import CheckpointConfig
    from framework.errors import UserError

    run_dir, defaults, saved = Path(run_dir), CheckpointConfig(), cfg
    if saved is None and (run_dir / "config.yaml").is_file():
        try:
            saved = OmegaConf.load(run_dir / "config.yaml")
        except Exception as exc:
            raise UserError(f"{run_dir / 'config.yaml'}: cannot be read ({exc}); it is written by framework.train "
                            "when a run starts") from None
    saved = saved if saved is not None else OmegaConf.create()
    monitor = OmegaConf.select(saved, "trainer.checkpoint.monitor", default=defaults.monitor)
    mode = OmegaConf.select(saved, "trainer.checkpoint.mode", default=defaults.mode)
    return Checkpointer(run_dir / "checkpoints", monitor=monitor, mode=mode)


@contextmanager
def whole_checkpoint(path: Path) -> Iterator[Path]:
    """``path`` as one file that stands alone: itself, or for a sharded checkpoint its state
    read whole (in this process's memory) into a temporary file of the same name, removed
    when the block ends."""
    if _shards_named_by(path) is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="whole-checkpoint-") as folder:
        whole = Path(folder) / path.name
        save_verified(materialize(load_checkpoint(path)), whole)
        yield whole


def save_verified(state: dict[str, Any], path: Path, expected_bytes: int | None = None) -> str:
    """``torch.save`` through a temporary file, with its SHA-256 written beside it before the
    rename (so every checkpoint file has its checksum); returns the SHA-256."""

    def write_sidecar(digest: str) -> None:
        write_hashed(path.with_name(path.name + ".sha256"), lambda f: f.write(f"{digest}  {path.name}\n".encode()))

    return write_hashed(path, lambda f: torch.save(state, f), write_sidecar, expected_bytes)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint after verifying its recorded SHA-256 (when one was recorded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        recorded = sidecar.read_text().split()
        expected = recorded[0] if recorded else ""
        if sha256_of(path) != expected:
            raise CheckpointError(f"checkpoint {path} is damaged: its SHA-256 differs from the one recorded when it "
                                  f"was written ({sidecar.name})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, not a checkpoint at all
        raise CheckpointError(_load_failure(path, exc)) from exc
    return _with_shards(state, path) if isinstance(state, dict) and SHARDS in state else state


def _shards_named_by(path: Path) -> str | None | bool:
    """The shard folder the checkpoint ``path`` names (None: none), or False when it cannot be
    read (memory-mapped: only its small parts are read)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return (state.get(SHARDS) or {}).get("folder")
    except Exception:  # damaged: whatever it named is kept
        return False


def _with_shards(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A sharded checkpoint's state, its folder's files verified, its sharded parts as :class:`Shards`."""
    try:
        folder, digests = path.parent / state[SHARDS]["folder"], dict(state[SHARDS]["sha256"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path} is damaged: its list of shards is not readable") from None
    for name, digest in sorted(digests.items()):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {path} is damaged: {folder / name}, one of its shards, is missing")
        if sha256_of(folder / name) != digest:
            raise CheckpointError(f"checkpoint {path} is damaged: {folder / name}, one of its shards, differs from the "
                                  "SHA-256 recorded when it was written")
    return {k: Shards(folder, v[SHARDED]) if isinstance(v, dict) and set(v) == {SHARDED} else v
            for k, v in state.items()}


def _load_failure(path: Path, exc: Exception) -> str:
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:  # torch's message advises weights_only=False, which would run the file's code
        return (f"checkpoint {path} holds objects other than tensors and plain values ({unsafe.group(1)}); it was "
                "not written by this framework and is not loaded, since loading it could run arbitrary code")
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}: {first_line})"
