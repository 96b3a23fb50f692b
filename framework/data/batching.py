"""Batch samplers over a sequence of lengths: fixed, sorted and dynamic (bucketed).

All three work on plain lengths (no dataset needed) and share one behaviour:

* batches are a pure function of ``(seed, epoch)``, so every rank computes the same
  global list and a resumed run recomputes the interrupted epoch exactly;
* under DDP (``num_replicas > 1``) with ``budget="rank"`` (the default) each batch is one
  rank's: the global list is cut into steps of ``num_replicas`` batches of similar cost and
  rank ``r`` takes batch ``r`` of every step, so an optimizer step holds ``num_replicas``
  batches. Every rank gets the same number of batches; only the very last step is filled
  with batches from the start of the epoch (the sole duplicates);
* with ``budget="global"`` each batch is one optimizer step shared by all ranks: the list
  is the one a single process makes and every batch is split into ``num_replicas`` parts,
  so steps per epoch and examples per step do not depend on the number of ranks;
* ``state_dict()`` / ``load_state_dict()`` record the epoch and how many batches of it
  were consumed, so iteration continues with exactly the next batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.data import Sampler

from framework.errors import BadValue, UserError

log = logging.getLogger(__name__)


class ResumeMismatch(UserError, ValueError):
    """A mid-epoch position that this sampler cannot continue (other batches, other ranks)."""

BatchOrdering = Literal["random", "ascending", "descending"]
Budget = Literal["rank", "global"]
BoundaryMethod = Literal["padding", "quantile", "duration"]
BATCH_ORDERINGS, BUDGETS, BOUNDARY_METHODS = get_args(BatchOrdering), get_args(Budget), get_args(BoundaryMethod)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class LengthBatchSampler(Sampler[list[int]]):
    """Common machinery: epoch-seeded batch lists, rank sharding, mid-epoch resume.

    Subclasses implement :meth:`global_batches`, the batches of one epoch for all ranks
    together, in the order they should be consumed.
    """

    def __init__(
        self,
        lengths: Sequence[float] | np.ndarray,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        even: bool = True,
        budget: Budget = "rank",
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.float64)
        if self.lengths.ndim != 1:
            raise ValueError(f"lengths must be one-dimensional, got shape {self.lengths.shape}")
        if len(self.lengths) and (not np.all(np.isfinite(self.lengths)) or self.lengths.min() < 0):
            bad = int(np.flatnonzero(~np.isfinite(self.lengths) | (self.lengths < 0))[0])
            raise ValueError(f"length of example {bad} is {self.lengths[bad]}; lengths must be finite and >= 0")
        if budget not in BUDGETS:
            raise BadValue(f"budget must be one of {BUDGETS}, got {budget!r}")
        world, this_rank = _world()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = this_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = epoch
        self._start = 0  # batches of self.epoch already consumed (set by load_state_dict)
        self._position = 0  # batches handed out by the running iterator
        self._cache: tuple[int, list[np.ndarray]] | None = None
        self._fingerprint = ""
        # Training needs the same number of batches on every rank (DDP steps in lockstep);
        # evaluation passes even=False to shard without repeating any example.
        self.even = even
        # evaluation shards whole batches: there is no optimizer step to keep the same
        self.split = budget == "global" and even and self.num_replicas > 1

    # -- to implement ---------------------------------------------------------------
    def global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    @property
    def step_width(self) -> int:
        """Batches per optimizer step in the global list: one per rank, or one when each
        batch is split across the ranks."""
        return 1 if self.split else self.num_replicas

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def rank_batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch (cached per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self.global_batches(self._rng())
            self._fingerprint = _fingerprint(batches, self.num_replicas)
            if self.split:
                batches = [split_batch(b, self.lengths, self.num_replicas, self.rank) for b in batches]
            else:
                batches = shard_batches(batches, self.num_replicas, self.rank, self.drop_last, self.even)
            self._cache = (self.epoch, batches)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start, self._start = self._start, 0
        self._position = start
        for batch in batches[start:]:
            self._position += 1
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self.rank_batches())

    def plan_fingerprint(self) -> str:
        """A digest of the batches all ranks plan for the current epoch (the same on every
        rank): two samplers with the same fingerprint hand out exactly the same batches."""
        self.rank_batches()
        return self._fingerprint

    def state_dict(self, consumed: int | None = None) -> dict[str, int | str]:
        """Position in the epoch and the fingerprint of its batches. ``consumed`` overrides the
        count of batches handed out, for a caller behind a prefetching DataLoader that knows
        how many it actually used."""
        position = self._position if consumed is None else consumed
        return {"epoch": self.epoch, "position": position, "num_batches": len(self),
                "plan": self.plan_fingerprint(), "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        """Continues the epoch at the saved position; refuses (:class:`ResumeMismatch`) when
        this sampler would plan other batches for it than the saved one did."""
        self.set_epoch(int(state["epoch"]))
        saved_world = int(state.get("num_replicas", self.num_replicas))
        if saved_world != self.num_replicas:
            raise ResumeMismatch(
                f"the checkpoint stopped in the middle of epoch {self.epoch + 1} with {saved_world} rank(s); this run "
                f"has {self.num_replicas}: resume mid-epoch with {saved_world} rank(s) (the number of ranks may "
                "change at an epoch boundary)")
        planned = state.get("plan")
        if (planned is not None and planned != self.plan_fingerprint()) or state["num_batches"] != len(self):
            raise ResumeMismatch(
                f"the checkpoint stopped in the middle of epoch {self.epoch + 1}, whose {state['num_batches']} batches "
                f"this run would plan differently ({len(self)} batches, other contents): the data, the batching "
                "settings or the seed changed; resume with the settings the run had (they may change at an epoch "
                "boundary)")
        self._start = int(state["position"])


def _fingerprint(batches: list[np.ndarray], num_replicas: int) -> str:
    digest = hashlib.sha256(str(num_replicas).encode())
    for batch in batches:
        digest.update(np.asarray(batch, dtype=np.int64).tobytes() + b";")
    return digest.hexdigest()[:16]


def shard_batches(
    batches: list[np.ndarray], num_replicas: int, rank: int, drop_last: bool = False, even: bool = True
) -> list[np.ndarray]:
    """Rank ``rank``'s share of consecutive steps of ``num_replicas`` batches.

    ``even``: every rank gets the same count, the last step filled from the epoch's start
    (or cut, with ``drop_last``); otherwise the last step is simply short."""
    if num_replicas == 1 or not even:
        return batches[rank::num_replicas]
    remainder = len(batches) % num_replicas
    if remainder and drop_last:
        batches = batches[: len(batches) - remainder]
    elif remainder:
        fill = num_replicas - remainder
        if not batches:
            return []
        batches = batches + [batches[i % len(batches)] for i in range(fill)]
    return batches[rank::num_replicas]


def split_batch(batch: np.ndarray, lengths: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s part of one batch split across ``num_replicas`` ranks: every
    ``num_replicas``-th example by length, so the parts cost about the same. A batch with
    fewer examples than ranks lends its examples again to the ranks left without one (DDP
    needs every rank in every step)."""
    by_length = batch[np.argsort(lengths[batch], kind="stable")]
    part = by_length[rank::num_replicas]
    return part if len(part) else by_length[rank % len(by_length) : rank % len(by_length) + 1]


def _order_steps(
    batches: list[np.ndarray],
    cost: np.ndarray,
    ordering: BatchOrdering,
    num_replicas: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Order batches so that each step of ``num_replicas`` consecutive batches holds
    batches of similar cost, then order the steps as ``ordering`` says."""
    if ordering == "random" and num_replicas == 1:
        return [batches[i] for i in rng.permutation(len(batches))]
    by_cost = np.argsort(cost, kind="stable")
    steps = [by_cost[i : i + num_replicas] for i in range(0, len(by_cost), num_replicas)]
    if ordering == "random":
        steps = [steps[i] for i in rng.permutation(len(steps))]
    elif ordering == "descending":
        steps = steps[::-1]
    return [batches[i] for step in steps for i in step]


class FixedBatchSampler(LengthBatchSampler):
    """``batch_size`` examples per batch, in a seeded random order when ``shuffle``."""

    def __init__(self, lengths, batch_size: int, **kwargs) -> None:
        super().__init__(lengths, **kwargs)
        if batch_size < 1:
            raise BadValue(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches


class SortedBatchSampler(LengthBatchSampler):
    """Batches of ``batch_size`` examples of neighbouring length (least padding, fixed
    composition). ``shuffle`` permutes the order of the batches, not their content."""

    def __init__(self, lengths, batch_size: int, descending: bool = False, shuffle: bool = False, **kwargs) -> None:
        super().__init__(lengths, shuffle=shuffle, **kwargs)
        if batch_size < 1:
            raise BadValue(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.descending = descending

    def global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = np.argsort(-self.lengths if self.descending else self.lengths, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        cost = np.array([self.lengths[b].max() for b in batches])
        if self.shuffle:
            return _order_steps(batches, cost, "random", self.step_width, rng)
        if self.step_width > 1:  # keep the sorted order but let each step hold neighbours
            return _order_steps(batches, cost, "descending" if self.descending else "ascending", self.step_width, rng)
        return batches


def fit_bucket_boundaries(
    lengths: np.ndarray, num_buckets: int, method: BoundaryMethod = "padding", candidates: int = 512
) -> np.ndarray:
    """Upper bucket edges fitted to ``lengths``.

    ``quantile``: equal-count buckets. ``duration``: equal-duration buckets (each holds
    about the same total length, as lhotse's ``DynamicBucketingSampler`` estimates them).
    ``padding``: the edges that minimise the total padding up to each bucket's edge,
    sum(edge(bucket(l)) - l), found exactly by dynamic programming over at most
    ``candidates`` candidate edges (the distinct lengths, or their quantiles when there
    are more).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if len(lengths) == 0:
        return np.array([np.inf])
    if num_buckets < 1:
        raise BadValue(f"num_buckets must be >= 1, got {num_buckets}")
    if method not in BOUNDARY_METHODS:
        raise BadValue(f"boundary method must be one of {BOUNDARY_METHODS}, got {method!r}")
    if method == "quantile":
        edges = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:])
        return np.unique(edges)
    if method == "duration":
        ordered = np.sort(lengths)
        cumulative = np.cumsum(ordered)
        shares = cumulative[-1] * np.arange(1, num_buckets) / num_buckets
        return np.unique(np.append(ordered[np.searchsorted(cumulative, shares)], ordered[-1]))

    uniq = np.unique(lengths)
    if len(uniq) > candidates:
        uniq = np.unique(np.quantile(lengths, np.linspace(0, 1, candidates + 1)[1:], method="higher"))
    b = len(uniq)
    k_max = min(num_buckets, b)
    # bin j holds lengths in (uniq[j-1], uniq[j]]
    bins = np.searchsorted(uniq, lengths, side="left")
    count = np.bincount(bins, minlength=b).astype(np.float64)
    total = np.bincount(bins, weights=lengths, minlength=b)
    ncum = np.concatenate([[0.0], np.cumsum(count)])
    scum = np.concatenate([[0.0], np.cumsum(total)])
    i = np.arange(b)[:, None]
    j = np.arange(b)[None, :]
    # cost[i, j]: padding of one bucket covering bins i..j with edge uniq[j]
    cost = uniq[None, :] * (ncum[j + 1] - ncum[i]) - (scum[j + 1] - scum[i])
    cost = np.where(i <= j, cost, np.inf)
    best = cost[0].copy()  # one bucket covering bins 0..j
    choice = np.zeros((k_max, b), dtype=np.int64)
    for k in range(1, k_max):
        # a new bucket starts at bin i >= 1, after a best (k)-bucket solution ending at i-1
        prev = np.concatenate([[np.inf], best[:-1]])
        total_cost = prev[:, None] + cost
        choice[k] = np.argmin(total_cost, axis=0)
        best = total_cost[choice[k], np.arange(b)]
    # walk back from the last bin
    edges = []
    end = b - 1
    for k in range(k_max - 1, -1, -1):
        edges.append(uniq[end])
        start = choice[k, end] if k > 0 else 0
        end = start - 1
        if end < 0:
            break
    return np.array(sorted(edges))


def greedy_cut(costs: list[float], budget: float, cap: int, drop_last: bool = False) -> list[tuple[int, int, float]]:
    """Consecutive runs of ``costs`` cut greedily into batches as full as ``budget`` allows:
    ``(start, stop, cost of the costliest)`` per batch, with ``(stop - start) * costliest <=
    budget`` and at most ``cap`` examples (a single example over the budget is a batch of its
    own). ``drop_last`` leaves out the last batch when one more example would still fit in it.

    Map-style dynamic batching cuts each bucket of an epoch with it; streamed shards cut each
    bucket of a reader's stream with it, so both follow one rule."""
    # A plain loop over floats beats per-batch numpy calls here (1M lengths in ~0.3 s).
    runs = []
    end = len(costs)
    i = 0
    while i < end:
        start, longest = i, costs[i]
        i += 1
        while i < end and i - start < cap:
            longer = costs[i] if costs[i] > longest else longest
            if (i - start + 1) * longer > budget:
                break
            longest = longer
            i += 1
        size = i - start
        room_left = size < cap and (size + 1) * longest <= budget
        if drop_last and i == end and room_left:
            break  # the last batch is not full
        runs.append((start, i, longest))
    return runs


class DynamicBatchSampler(LengthBatchSampler):
    """Bucketed batches of variable size under a budget on padded cost.

    A batch's cost is ``len(batch) * cost(longest)``, with ``cost(d) = d + d**2 / quadratic``
    when ``quadratic`` is set (attention-style models) and ``d`` otherwise; it never exceeds
    ``max_batch_length``. Examples are grouped into buckets by length (``bucket_boundaries``
    as upper edges, or ``num_buckets`` edges fitted to the data), shuffled inside each
    bucket with ``(seed, epoch)``, and cut greedily into batches as full as the budget and
    ``max_batch_ex`` allow.

    ``mix_buckets=k`` (k > 1) draws each batch from a band of ``k`` neighbouring buckets:
    every epoch each example moves up by 0 to k-1 buckets at random, so bucket ``j`` holds
    examples of buckets ``j-k+1 .. j``. Batches then mix neighbouring lengths and change
    composition every epoch (narrow buckets alone give the same batches every epoch when a
    bucket holds about one batch) while keeping about the same sizes; padding grows about
    as with k times wider buckets.

    ``sortagrad=n`` orders the batches of the first ``n`` epochs shortest first, whatever
    ``batch_ordering`` says (DeepSpeech2's SortaGrad: short utterances first steady early
    CTC training).
    """

    def __init__(
        self,
        lengths,
        max_batch_length: float,
        num_buckets: int | None = 60,
        bucket_boundaries: Sequence[float] | None = None,
        max_batch_ex: int | None = None,
        shuffle: bool = True,
        batch_ordering: BatchOrdering = "random",
        quadratic: float | None = None,
        too_long: Literal["drop", "error"] = "drop",
        boundary_method: BoundaryMethod = "padding",
        mix_buckets: int = 1,
        sortagrad: int = 0,
        ids: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(lengths, shuffle=shuffle, **kwargs)
        if sortagrad < 0:
            raise BadValue(f"sortagrad must be >= 0 (epochs ordered shortest first), got {sortagrad}")
        if mix_buckets < 1:
            raise BadValue(f"mix_buckets must be >= 1 (1: no mixing), got {mix_buckets}")
        if max_batch_ex is not None and max_batch_ex < 1:
            raise BadValue(f"max_batch_ex must be >= 1 (or null: no cap), got {max_batch_ex}")
        if max_batch_length <= 0:
            raise BadValue(f"max_batch_length must be > 0, got {max_batch_length}")
        if batch_ordering not in BATCH_ORDERINGS:
            raise BadValue(f"batch_ordering must be one of {BATCH_ORDERINGS}, got {batch_ordering!r}")
        if too_long not in ("drop", "error"):
            raise BadValue(f"too_long must be 'drop' or 'error', got {too_long!r}")
        self.max_batch_length = float(max_batch_length)
        self.max_batch_ex = max_batch_ex
        self.batch_ordering = batch_ordering
        self.quadratic = quadratic
        self.mix_buckets = int(mix_buckets)
        self.sortagrad = int(sortagrad)

        cost = self.cost(self.lengths)
        too_long_idx = np.flatnonzero(cost > self.max_batch_length)
        # evaluation scores every example: one that exceeds the budget becomes a batch of its own
        self.alone = too_long_idx if not self.even else np.array([], dtype=np.int64)
        self.dropped = too_long_idx if self.even else np.array([], dtype=np.int64)
        if len(self.dropped):
            names = [str(ids[i]) for i in self.dropped[:5]] if ids is not None else self.dropped[:5].tolist()
            msg = (f"{len(self.dropped)} of {len(self.lengths)} example(s) cost more than "
                   f"max_batch_length={max_batch_length} on their own (first: {', '.join(map(str, names))}; longest "
                   f"{self.lengths[self.dropped].max():g})")
            if len(self.dropped) == len(self.lengths):
                raise BadValue(f"every example: {msg}; nothing is left to train on: raise batching.max_batch_length "
                               f"above {self.cost(self.lengths.min()):g} (or filter the data by duration)")
            if too_long == "error":
                raise BadValue(msg + "; raise batching.max_batch_length or filter the data by duration")
            log.warning("%s: they are left out of training (batching.too_long=drop)", msg)
        self.kept = np.flatnonzero(cost <= self.max_batch_length)

        kept_lengths = self.lengths[self.kept]
        if bucket_boundaries is not None:
            edges = np.asarray(sorted(bucket_boundaries), dtype=np.float64)
        elif num_buckets is not None:
            edges = fit_bucket_boundaries(kept_lengths, num_buckets, boundary_method)
        else:
            raise BadValue("give num_buckets or bucket_boundaries")
        self.bucket_boundaries = edges
        # each kept example's bucket; examples above the last given edge go to one more bucket
        self.bucket_of_kept = np.searchsorted(edges, kept_lengths, side="left")

    def cost(self, length):
        if self.quadratic:
            return length + length**2 / self.quadratic
        return length

    def global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(self.kept)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.mix_buckets > 1:
            batches, longest_of = self._mixed_batches(order)
        else:
            batches, longest_of = self._greedy_batches(order)
        batches += [np.array([i]) for i in self.alone]
        longest_of = list(longest_of) + self.cost(self.lengths[self.alone]).tolist()
        ordering = "ascending" if self.epoch < self.sortagrad else self.batch_ordering
        return _order_steps(batches, np.asarray(longest_of), ordering, self.step_width, rng)

    def _greedy_batches(self, order: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """Each bucket, in ``order``, cut into batches as full as the budget allows."""
        by_bucket = order[np.argsort(self.bucket_of_kept[order], kind="stable")]
        counts = np.bincount(self.bucket_of_kept, minlength=len(self.bucket_boundaries) + 1)
        cost_sorted = self.cost(self.lengths[self.kept[by_bucket]]).tolist()
        cap = self.max_batch_ex or len(order) or 1
        batches, longest_of = [], []
        pos = 0
        for count in counts.tolist():
            end = pos + count
            for start, stop, longest in greedy_cut(cost_sorted[pos:end], self.max_batch_length, cap, self.drop_last):
                batches.append(self.kept[by_bucket[pos + start : pos + stop]])
                longest_of.append(longest)
            pos = end
        return batches, longest_of

    def _mixed_batches(self, order: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """Bands of ``mix_buckets`` buckets, each cut into equal batches.

        The i-th example of bucket b (in ``order``) joins band b + i mod k, so which examples
        mix is random but how many is not: every band, and so every epoch, has the same
        size. Band j holds buckets j-k+1..j, so its longest possible example is known and
        fixes how many batches it needs; the count of batches never changes between epochs
        (a learning-rate schedule planned from the first epoch holds for all)."""
        k = self.mix_buckets
        n = len(order)
        bucket = self.bucket_of_kept[order]
        by_bucket = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=len(self.bucket_boundaries) + 1)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        place = np.empty(n, dtype=np.int64)
        place[by_bucket] = np.arange(n) - first[bucket[by_bucket]]
        band = bucket + place % k
        by_band = order[np.argsort(band, kind="stable")]
        band_counts = np.bincount(band, minlength=len(counts) + k - 1)

        cost = self.cost(self.lengths[self.kept])  # by position in self.kept, as ``order`` is
        longest_in_bucket = np.zeros(len(counts))
        np.maximum.at(longest_in_bucket, self.bucket_of_kept, cost)
        cap_ex = self.max_batch_ex or n or 1
        batches, longest_of = [], []
        pos = 0
        for j, count in enumerate(band_counts.tolist()):
            members = by_band[pos : pos + count]
            pos += count
            if not count:
                continue
            bound = longest_in_bucket[max(0, j - k + 1) : j + 1].max()
            cap = cap_ex if bound <= 0 else max(1, min(cap_ex, int(self.max_batch_length // bound)))
            if self.drop_last and count < cap:
                continue  # the band cannot fill one batch
            for part in np.array_split(members, -(-count // cap)):
                batches.append(self.kept[part])
                longest_of.append(float(cost[part].max()))
        return batches, longest_of


def batch_stats(batches: Sequence[Sequence[int]], lengths: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Padding fraction (padded elements / elements held), batch count and sizes."""
    lengths = np.asarray(lengths, dtype=np.float64)
    sizes = np.array([len(b) for b in batches])
    if len(sizes) == 0:
        return {"num_batches": 0, "examples": 0, "padding_fraction": 0.0, "mean_batch_size": 0.0}
    flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
    owner = np.repeat(np.arange(len(batches)), sizes)
    longest = np.zeros(len(batches))
    np.maximum.at(longest, owner, lengths[flat])
    held = float((longest * sizes).sum())
    real = float(lengths[flat].sum())
    return {
        "num_batches": len(batches),
        "examples": int(len(flat)),
        "padding_fraction": (held - real) / held if held else 0.0,
        "mean_batch_size": float(sizes.mean()),
        "min_batch_size": int(sizes.min()),
        "max_batch_size": int(sizes.max()),
        "max_batch_cost": float((longest * sizes).max()),
    }


__all__ = [
    "LengthBatchSampler",
    "FixedBatchSampler",
    "SortedBatchSampler",
    "DynamicBatchSampler",
    "fit_bucket_boundaries",
    "greedy_cut",
    "shard_batches",
    "batch_stats",
]
