"""Streaming a shards dataset: batches planned from the index, then read shard by shard.

Every epoch is planned before a byte of audio is read, from the index's lengths alone, as
map-style batching is; the plan is a pure function of ``(seed, epoch)``, the index, the
batching settings and the number of readers, so every rank computes the same one and a
resumed run recomputes the interrupted epoch exactly.

1. The shards are put in an order drawn from ``(seed, epoch)`` (index order for
   evaluation) and dealt, in that order, each to the rank with the fewest seconds so far,
   then within that rank to the reader with the fewest seconds so far: ``ranks x readers``
   streams. A reader is a DataLoader worker (``trainer.num_workers``; the main process when
   0), so every shard is read by one reader, once, from start to end.
2. Each stream goes through its shards in windows of ``window_shards`` shards; the
   examples of a window are shuffled together (not in evaluation).
3. The stream is batched as map-style dynamic batching is, with the same sampler settings:
   its bucket edges (fitted to the whole index), its cost and budget, and
   :func:`framework.data.batching.greedy_cut` cutting each bucket's examples, in stream
   order, into batches as full as the budget allows. A batch is ready once the window of
   its last example is read, and the stream's batches come in that order; a bucket's
   partial batch waits for the next window's examples, so batches stay as full as
   map-style ones.
4. The remainder: DDP needs the same number of batches (optimizer steps) on every rank,
   and the ranks' shards rarely cut into exactly as many. A rank with fewer batches than
   the most any rank has splits its largest batches (most examples) in two, one more batch
   per split, until it has as many; a half is under the budget as its whole was. Nothing
   is repeated and nothing left out: training sees every example once per epoch (but those
   over the budget, as map-style batching). The readers of one rank may have different
   counts (the DataLoader takes the next reader that still has batches). Evaluation
   splits nothing: every example is scored once.

A rank's batches are its readers' in turn, skipping readers that have run out (the
DataLoader's order over its workers). A checkpoint records the position in the rank's
batches and the plan's fingerprint, as map-style samplers do; a resumed epoch hands the
readers the rest of their streams in the turn order that continues at that position, and
a reader reads only the shards that hold batches still to come. Random draws in reader
processes (augmentation in the workers) are seeded per batch, so they do not depend on
where the epoch was resumed either.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from framework.data.batching import (
    DynamicBatchSampler,
    FixedBatchSampler,
    LengthBatchSampler,
    ResumeMismatch,
    greedy_cut,
)
from framework.data.collate import Batch, SkippedExample, collate
from framework.data.shards import ShardDataset
from framework.errors import BadValue, UserError

log = logging.getLogger(__name__)

AHEAD_WINDOWS = 2  # windows of shards a reader downloads ahead; with one, a reader in the
# main process waited for 20 ms requests: 1.31 s an epoch of WAV shards against 0.95 s with two
ALONE = -2  # bucket of an example over the budget that evaluation scores in a batch of its own
LEFT_OUT = -1  # bucket of an example over the budget that training leaves out


@dataclass
class Stream:
    """One reader's part of an epoch: its shards in reading order and its batches in the
    order they become ready (``ready[i]``: the window of shards that completes batch ``i``)."""

    shards: list[int]
    batches: list[np.ndarray]
    ready: list[int]
    window: int


class ShardPlan(LengthBatchSampler):
    """The batches of a :class:`ShardDataset` per epoch, for the DataLoader workers that read
    them (see the module doc); built from the map-style ``sampler`` the batching config
    makes, whose settings it follows. It is what the Brain reads as the loader's
    ``batch_sampler``: ``len``, ``set_epoch``, ``rank_batches``, ``state_dict`` /
    ``load_state_dict`` and ``plan_fingerprint``."""

    def __init__(self, dataset: ShardDataset, sampler: LengthBatchSampler, num_workers: int = 0) -> None:
        super().__init__(sampler.lengths, shuffle=sampler.shuffle, seed=sampler.seed, epoch=sampler.epoch,
                         drop_last=sampler.drop_last, num_replicas=sampler.num_replicas, rank=sampler.rank,
                         even=sampler.even)
        self.members = [dataset.members(s) for s in range(len(dataset.shards))]
        self.window = dataset.window_shards
        self.readers = max(1, num_workers)
        self.source = dataset.path
        self.bucket, self.costs, self.budget, self.cap = _cutting_rule(sampler)
        self._streams: tuple[int, list[Stream]] | None = None
        self._warned = False

    # ---------------------------------------------------------------------- the plan
    def streams(self) -> list[Stream]:
        """Every stream of the current epoch, rank after rank (cached per epoch)."""
        if self._streams is None or self._streams[0] != self.epoch:
            streams = [self._stream(shards, k) for k, shards in enumerate(self._deal())]
            if self.even:
                self._even_out(streams)
            self._streams = (self.epoch, streams)
            self._cache = None
        return self._streams[1]

    def rank_streams(self) -> list[Stream]:
        """This rank's streams, one per reader."""
        return self.streams()[self.rank * self.readers : (self.rank + 1) * self.readers]

    def rank_batches(self) -> list[np.ndarray]:
        """This rank's batches in the order the DataLoader hands them out: its readers' in turn."""
        streams = self.streams()
        if self._cache is None or self._cache[0] != self.epoch:
            self._fingerprint = self._digest(streams)
            self._cache = (self.epoch, _in_turn([s.batches for s in self.rank_streams()]))
        return self._cache[1]

    def _deal(self) -> list[list[int]]:
        """The shards of each stream, rank after rank: in the epoch's order, each to the rank
        with the fewest seconds so far, then to that rank's reader with the fewest."""
        order = self._rng().permutation(len(self.members)) if self.shuffle else np.arange(len(self.members))
        rank_load = np.zeros(self.num_replicas)
        load = np.zeros((self.num_replicas, self.readers))
        dealt: list[list[int]] = [[] for _ in range(self.num_replicas * self.readers)]
        for shard in order.tolist():
            seconds = self.lengths[self.members[shard]].sum()
            r = int(np.argmin(rank_load))
            k = int(np.argmin(load[r]))
            dealt[r * self.readers + k].append(shard)
            rank_load[r] += seconds
            load[r, k] += seconds
        return dealt

    def _stream(self, shards: list[int], k: int) -> Stream:
        """Stream ``k``'s batches: its windows' examples (shuffled), bucket by bucket cut in
        stream order, ordered by the position of their last example."""
        rng = np.random.default_rng([self.seed, self.epoch, 1 + k])
        parts, windows = [], []
        for w, first in enumerate(range(0, len(shards), self.window)):
            examples = np.concatenate([self.members[s] for s in shards[first : first + self.window]])
            examples = examples[self.bucket[examples] != LEFT_OUT]
            parts.append(rng.permutation(examples) if self.shuffle else examples)
            windows.append(np.full(len(examples), w))
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        window_of = np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)
        bucket = self.bucket[order]
        batches, last = [], []
        by_bucket = np.argsort(bucket, kind="stable")  # stream positions, bucket by bucket, in stream order
        for at in np.split(by_bucket, np.flatnonzero(np.diff(bucket[by_bucket])) + 1) if len(order) else []:
            # an ALONE example is over the budget: greedy_cut gives each a batch of its own
            for start, stop, _ in greedy_cut(self.costs[order[at]].tolist(), self.budget, self.cap, self.drop_last):
                batches.append(order[at[start:stop]])
                last.append(at[stop - 1])
        by_last = np.argsort(np.asarray(last, dtype=np.int64), kind="stable")
        return Stream(shards, [batches[i] for i in by_last], [int(window_of[last[i]]) for i in by_last], self.window)

    def _even_out(self, streams: list[Stream]) -> None:
        """Splits the largest batches of the ranks with fewer batches until every rank has as
        many as the one with the most (the remainder, module doc item 4)."""
        per_rank = [streams[r * self.readers : (r + 1) * self.readers] for r in range(self.num_replicas)]
        counts = [sum(len(s.batches) for s in mine) for mine in per_rank]
        most = max(counts)
        for mine, count in zip(per_rank, counts):
            for _ in range(most - count):
                size, k, i = max(((len(b), k, i) for k, s in enumerate(mine) for i, b in enumerate(s.batches)),
                                  default=(0, 0, 0))
                if size < 2:
                    raise UserError(
                        f"{self.source}: {len(self.members)} shard(s) with {len(self.lengths)} examples cannot give "
                        f"{self.num_replicas} ranks the same number of batches: write more, smaller shards (`python -m "
                        "framework.prepare shards --shard-size`) or train on fewer ranks")
                batch, stream = mine[k].batches[i], mine[k]
                stream.batches[i : i + 1] = [batch[: size // 2], batch[size // 2 :]]
                stream.ready.insert(i, stream.ready[i])
        if self.num_replicas > 1 and most > 0 and sum(counts) < most * len(counts) and not self._warned:
            self._warned = True
            log.info("%s: epoch %d: %d batch(es) split in two to give %d ranks %d batches each", self.source,
                     self.epoch + 1, most * len(counts) - sum(counts), self.num_replicas, most)

    def _digest(self, streams: list[Stream]) -> str:
        digest = hashlib.sha256(f"{self.num_replicas},{self.readers},{self.window}".encode())
        for s in streams:
            digest.update(np.asarray(s.shards, dtype=np.int64).tobytes() + b"|")
            for batch in s.batches:
                digest.update(np.asarray(batch, dtype=np.int64).tobytes() + b";")
        return digest.hexdigest()[:16]

    # ---------------------------------------------------------------------- resume
    def take_start(self) -> int:
        """The position an iteration starts at (set by :meth:`load_state_dict`), once."""
        start, self._start = self._start, 0
        self._position = start
        return start

    def advance(self) -> None:
        self._position += 1

    def state_dict(self, consumed: int | None = None) -> dict[str, int | str]:
        return {**super().state_dict(consumed), "readers": self.readers}

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        saved = int(state.get("readers", self.readers))
        if saved != self.readers:
            raise ResumeMismatch(
                f"the checkpoint stopped in the middle of epoch {int(state['epoch']) + 1} with {saved} shard reader(s) "
                f"per rank; this run has {self.readers}: resume mid-epoch with trainer.num_workers="
                f"{saved if saved > 1 else '0 or 1'} (it may change at an epoch boundary)")
        super().load_state_dict(state)


def _cutting_rule(sampler: LengthBatchSampler) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(bucket of each example, cost of each example, budget, most examples per batch) of
    ``sampler``'s batching; refuses what a stream cannot follow."""
    n = len(sampler.lengths)
    if isinstance(sampler, DynamicBatchSampler):
        if sampler.split:
            raise BadValue("batching.budget=global splits each batch across the ranks, but with dataset=shards each "
                           "rank reads its own shards: use batching.budget=rank")
        if sampler.even and sampler.mix_buckets > 1:
            raise BadValue(f"batching.mix_buckets={sampler.mix_buckets} is not available with dataset=shards (its "
                           "batches mix within a window of shards anyway): use batching.mix_buckets=1")
        if sampler.even and (sampler.batch_ordering != "random" or sampler.sortagrad):
            setting = f"sortagrad={sampler.sortagrad}" if sampler.sortagrad else \
                f"batch_ordering={sampler.batch_ordering}"
            raise BadValue(f"batching.{setting} orders a whole epoch's batches by length, which a shard stream cannot "
                           "follow (its batches come as the shards are read): use batching.batch_ordering=random "
                           "batching.sortagrad=0 with dataset=shards")
        bucket = np.full(n, LEFT_OUT, dtype=np.int64)
        bucket[sampler.kept] = sampler.bucket_of_kept
        bucket[sampler.alone] = ALONE
        return bucket, np.asarray(sampler.cost(sampler.lengths), dtype=np.float64), sampler.max_batch_length, \
            sampler.max_batch_ex or n or 1
    if isinstance(sampler, FixedBatchSampler):
        return np.zeros(n, dtype=np.int64), np.zeros(n), np.inf, sampler.batch_size
    raise BadValue(f"{type(sampler).__name__} orders a whole epoch by length, which a shard stream cannot follow: use "
                   "batching=dynamic or batching=fixed with dataset=shards")


def _in_turn(lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Items of ``lists`` taken in turn, skipping the exhausted ones (a DataLoader's order
    over its workers)."""
    longest = max((len(x) for x in lists), default=0)
    return [x[i] for i in range(longest) for x in lists if i < len(x)]


def _turns_from(counts: list[int], start: int) -> list[tuple[int, int]]:
    """``(stream, its first batch to come)`` per reader, for the rest of the in-turn order of
    streams with ``counts`` batches from position ``start``: the stream of batch ``start``
    first, then the others that still have batches, in turn."""
    sequence = [k for i in range(max(counts, default=0)) for k in range(len(counts)) if i < counts[k]]
    taken = np.bincount(sequence[:start], minlength=len(counts)).tolist()
    return [(k, taken[k]) for k in dict.fromkeys(sequence[start:])]


class ShardBatches(IterableDataset):
    """The batches of one rank's streams, read by the DataLoader's workers: worker ``w`` reads
    the stream whose turn it serves (:meth:`begin` sets the streams and the start)."""

    def __init__(self, dataset: ShardDataset, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.streams: list[Stream] = []
        self.start = 0
        self.seed_key: tuple[int, ...] = ()

    def begin(self, streams: list[Stream], start: int, seed_key: tuple[int, ...]) -> None:
        self.streams, self.start, self.seed_key = streams, start, seed_key

    def __len__(self) -> int:
        return sum(len(s.batches) for s in self.streams) - self.start

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        turns = _turns_from([len(s.batches) for s in self.streams], self.start)
        if worker >= len(turns):  # every stream this reader could serve is finished
            return
        k, first = turns[worker]
        reseed = None if info is None else (*self.seed_key, k)  # the main process' RNG is the run's own
        yield from self.read(self.streams[k], first, reseed)

    def read(self, stream: Stream, first: int, reseed: tuple[int, ...] | None) -> Iterator[Batch]:
        """``stream``'s batches from its ``first``: each shard that holds one of them read once,
        in order, as far as the next batch needs."""
        batches, ready = stream.batches[first:], stream.ready[first:]
        needed = set(np.concatenate(batches).tolist()) if batches else set()
        wanted = [needed.intersection(self.dataset.members(shard).tolist()) for shard in stream.shards]
        # downloaded ahead (a remote folder): the next AHEAD_WINDOWS windows' worth of shards
        # holding examples still to come, so a window's shards have all arrived by the time it
        # starts even when reading a shard takes less time than a request's latency
        holding = [i for i, w in enumerate(wanted) if w]
        following = [[stream.shards[j] for j in holding[k:k + AHEAD_WINDOWS * stream.window]]
                     for k in np.searchsorted(holding, np.arange(len(wanted)), side="right")]
        pending: dict[int, memoryview | SkippedExample] = {}
        done = 0  # shards of the stream read (or passed over: none of their examples is needed)
        try:
            for n, (batch, window) in enumerate(zip(batches, ready)):
                while done < min((window + 1) * stream.window, len(stream.shards)):
                    if wanted[done]:
                        pending.update(self.dataset.read_shard(stream.shards[done], wanted[done],
                                                               then=following[done]))
                    done += 1
                if reseed is not None:
                    _seed_all(int(np.random.SeedSequence([*reseed, first + n]).generate_state(1)[0]))
                yield collate([self._example(i, pending.pop(i)) for i in batch.tolist()])
        finally:  # stopped early (a time budget, a step limit): the shards fetched ahead are not needed
            self.dataset.drop_ahead()

    def _example(self, index: int, payload: memoryview | SkippedExample):
        # raw audio stays integer PCM until the batch scales it into its rows
        example = self.dataset.decode(index, payload, pcm=self.transform is None)
        if self.transform is None or isinstance(example, SkippedExample):
            return example
        return {**example, "inputs": self.transform(example["inputs"])}


def _seed_all(seed: int) -> None:
    """Seeds a reader process' random draws. Only torch's CPU generator: a DataLoader worker
    uses no accelerator, and ``torch.manual_seed`` would queue a seeding of each one not
    started, formatting the call's stack, every batch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


def _unchanged(batch: Batch) -> Batch:
    return batch  # a reader hands out whole batches


class ShardLoader:
    """What the Brain iterates for a shards dataset, in place of a DataLoader: the DataLoader
    of :class:`ShardBatches` (one reader per worker), ``batch_sampler`` (the
    :class:`ShardPlan`) and ``dataset`` (the :class:`ShardDataset`, whose ``lengths`` are
    the examples' seconds)."""

    def __init__(self, dataset: ShardDataset, plan: ShardPlan, num_workers: int, seed: int, pin_memory: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 worker_init_fn: Callable[[int], None] | None = None) -> None:
        self.dataset = dataset
        self.batch_sampler = plan
        self.batches = ShardBatches(dataset, transform)
        # Workers start with each iteration (not persistent): each takes the epoch's streams
        # and start position as they are when the iteration begins.
        self._iterator = None  # the running iteration's, for framework.data.loader.end_workers
        self.loader = DataLoader(self.batches, batch_size=None, collate_fn=_unchanged, num_workers=num_workers,
                                 pin_memory=pin_memory, worker_init_fn=worker_init_fn,
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Batch]:
        plan = self.batch_sampler
        start = plan.take_start()
        self.batches.begin(plan.rank_streams(), start, (plan.seed, plan.epoch, plan.rank))
        batches = None
        try:
            batches = self._iterator = iter(self.loader)  # within the try: a stop may come as workers start
            for batch in batches:
                plan.advance()
                yield batch
        except BaseException:
            # a stop while the workers wait on a stalled download: ended now, not after the
            # DataLoader's shutdown has given each 5 s, before the checkpoint is written
            from framework.data.loader import stop_workers

            if batches is not None:
                stop_workers(batches)
            raise
        finally:
            self._iterator = None
