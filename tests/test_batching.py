"""Invariants of the fixed, sorted and dynamic batch samplers (``mixed``: dynamic with
batches drawn from bands of neighbouring buckets)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from framework.data.batching import (
    DynamicBatchSampler,
    FixedBatchSampler,
    SortedBatchSampler,
    batch_stats,
    fit_bucket_boundaries,
)

KINDS = ["fixed", "sorted", "dynamic", "mixed"]


def skewed_lengths(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(10, 16, n * 3 // 4), rng.lognormal(1.2, 0.6, n - n * 3 // 4)]).clip(0.3, 30)


def all_indices(batches):
    return sorted(i for b in batches for i in b)


def make(kind, lengths, **kw):
    if kind == "fixed":
        return FixedBatchSampler(lengths, batch_size=kw.pop("batch_size", 16), **kw)
    if kind == "sorted":
        return SortedBatchSampler(lengths, batch_size=kw.pop("batch_size", 16), **kw)
    if kind == "mixed":
        kw.setdefault("mix_buckets", 3)
    return DynamicBatchSampler(lengths, max_batch_length=kw.pop("max_batch_length", 100.0), num_buckets=kw.pop("num_buckets", 10), **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_every_example_exactly_once_per_epoch(kind):
    lengths = skewed_lengths()
    sampler = make(kind, lengths)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert all_indices(batches) == list(range(len(lengths)))
        assert len(batches) == len(sampler)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_and_epoch_same_batches_and_shuffle_changes_them(kind):
    lengths = skewed_lengths()
    a, b = make(kind, lengths, seed=3, shuffle=True), make(kind, lengths, seed=3, shuffle=True)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    b.set_epoch(6)
    assert list(a) != list(b)
    assert list(a) != list(make(kind, lengths, seed=4, shuffle=True, epoch=5))


def test_dynamic_batch_composition_changes_across_epochs():
    sampler = make("dynamic", skewed_lengths(), shuffle=True)
    first = {tuple(sorted(b)) for b in sampler}
    sampler.set_epoch(1)
    second = {tuple(sorted(b)) for b in sampler}
    assert len(first & second) < 0.1 * len(first)  # different groupings, not just a new order


@pytest.mark.parametrize("mix_buckets", [1, 2])
@pytest.mark.parametrize("quadratic", [None, 20.0])
def test_dynamic_budget_counts_padded_cost_and_is_never_exceeded(quadratic, mix_buckets):
    lengths = skewed_lengths()
    sampler = DynamicBatchSampler(lengths, max_batch_length=120.0, num_buckets=8, max_batch_ex=40, quadratic=quadratic,
                                  mix_buckets=mix_buckets)
    cost = sampler.cost
    for batch in sampler:
        longest = lengths[batch].max()
        assert len(batch) * cost(longest) <= 120.0 + 1e-9
        assert len(batch) <= 40
    stats = batch_stats(list(sampler), lengths)
    assert 0 <= stats["padding_fraction"] < 0.15


def test_dynamic_batches_are_greedy_full():
    # with one bucket of equal lengths every batch but the last holds exactly budget // length
    sampler = DynamicBatchSampler([2.0] * 100, max_batch_length=21.0, num_buckets=1)
    sizes = sorted(len(b) for b in sampler)
    assert sizes == [10] * 10


@pytest.mark.parametrize("ordering", ["ascending", "descending"])
def test_batch_ordering_is_honoured(ordering):
    lengths = skewed_lengths()
    sampler = DynamicBatchSampler(lengths, max_batch_length=100.0, num_buckets=10, batch_ordering=ordering)
    longest = [lengths[b].max() for b in sampler]
    assert longest == sorted(longest, reverse=ordering == "descending")


def test_sortagrad_orders_only_the_first_epochs_shortest_first():
    lengths = skewed_lengths()
    sampler = DynamicBatchSampler(lengths, max_batch_length=100.0, num_buckets=10, sortagrad=2)
    plain = DynamicBatchSampler(lengths, max_batch_length=100.0, num_buckets=10)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        plain.set_epoch(epoch)
        longest = [lengths[b].max() for b in sampler]
        assert (longest == sorted(longest)) == (epoch < 2)
        # the same batches either way: SortaGrad changes their order, not their content
        assert sorted(map(tuple, sampler)) == sorted(map(tuple, plain))
    with pytest.raises(ValueError, match="sortagrad"):
        DynamicBatchSampler(lengths, max_batch_length=100.0, sortagrad=-1)


def test_sorted_sampler_sorts_and_shuffles_only_the_order():
    lengths = skewed_lengths()
    plain = list(SortedBatchSampler(lengths, batch_size=8, shuffle=False))
    flat = [i for b in plain for i in b]
    assert list(lengths[flat]) == sorted(lengths)
    shuffled = list(SortedBatchSampler(lengths, batch_size=8, shuffle=True))
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, plain)) and shuffled != plain
    desc = list(SortedBatchSampler(lengths, batch_size=8, descending=True, shuffle=False))
    assert lengths[desc[0]].min() >= lengths[desc[-1]].max()


def test_fixed_drop_last():
    assert [len(b) for b in FixedBatchSampler(range(10), batch_size=4, drop_last=True)] == [4, 4]
    assert sorted(len(b) for b in FixedBatchSampler(range(10), batch_size=4)) == [2, 4, 4]


def test_too_long_examples_dropped_with_a_counted_warning_or_raise(caplog):
    lengths = [1.0, 2.0, 50.0, 3.0, 60.0]
    with caplog.at_level(logging.WARNING):
        sampler = DynamicBatchSampler(lengths, max_batch_length=10.0, num_buckets=2)
    assert "2 of 5 example(s) cost more than max_batch_length=10.0 on their own (first: 2, 4; longest 60)" in caplog.text
    assert all_indices(list(sampler)) == [0, 1, 3]
    evaluation = DynamicBatchSampler(lengths, max_batch_length=10.0, num_buckets=2, even=False, shuffle=False)
    assert all_indices(list(evaluation)) == [0, 1, 2, 3, 4]  # evaluation scores every example
    assert sorted(len(b) for b in evaluation if max(lengths[i] for i in b) > 10) == [1, 1]  # alone
    with pytest.raises(ValueError, match="every example: 2 of 2 .* nothing is left to train on"):
        DynamicBatchSampler([50.0, 60.0], max_batch_length=10.0, num_buckets=2, ids=["a", "b"])
    with pytest.raises(ValueError, match="2 of 5 example.*raise batching.max_batch_length"):
        DynamicBatchSampler(lengths, max_batch_length=10.0, num_buckets=2, too_long="error")


def test_explicit_bucket_boundaries_are_used():
    lengths = np.linspace(0.5, 10, 200)
    sampler = DynamicBatchSampler(lengths, max_batch_length=30.0, bucket_boundaries=[2.0, 5.0])
    for batch in sampler:
        buckets = {int(np.searchsorted([2.0, 5.0], lengths[i])) for i in batch}
        assert len(buckets) == 1


def test_fitted_boundaries_beat_quantiles_on_padding():
    lengths = skewed_lengths(20000)
    def edge_padding(edges):
        return (edges[np.searchsorted(edges, lengths)] - lengths).sum()
    padding = fit_bucket_boundaries(lengths, 12, "padding")
    quantile = fit_bucket_boundaries(lengths, 12, "quantile")
    assert len(padding) == 12 and padding[-1] == lengths.max()
    assert edge_padding(padding) < edge_padding(quantile)


def test_padding_fit_is_optimal_on_a_small_case():
    # brute force over every choice of 2 upper edges among 6 distinct lengths
    lengths = np.array([1, 1, 1, 2, 5, 5, 6, 9, 9, 9, 9, 10], dtype=float)
    uniq = np.unique(lengths)
    def cost(edges):
        return (edges[np.searchsorted(edges, lengths)] - lengths).sum()
    best = min(cost(np.array([e, uniq[-1]])) for e in uniq[:-1])
    assert cost(fit_bucket_boundaries(lengths, 2)) == best


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_resumes_with_exactly_the_remaining_batches(kind):
    lengths = skewed_lengths()
    sampler = make(kind, lengths, shuffle=True, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    consumed = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state["position"] == 7 and state["epoch"] == 2

    fresh = make(kind, lengths, shuffle=True, seed=1)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert consumed + rest == full
    assert list(fresh) == full  # the next pass is a whole epoch again


def test_state_from_another_configuration_is_refused():
    lengths = skewed_lengths()
    state = make("dynamic", lengths).state_dict()
    with pytest.raises(ValueError, match="would plan differently"):
        make("dynamic", lengths, max_batch_length=50.0).load_state_dict(state)
    with pytest.raises(ValueError, match="with 1 rank.*this run has 2"):
        make("dynamic", lengths, num_replicas=2, rank=0).load_state_dict(state)


def test_state_of_other_batches_of_the_same_count_is_refused():
    """Other settings that happen to plan as many batches (not only the count is compared)."""
    lengths = skewed_lengths()
    counts = {n: len(make("dynamic", lengths, num_buckets=n)) for n in range(10, 40)}
    same = [(a, b) for a in counts for b in counts if a < b and counts[a] == counts[b]]
    assert same, counts
    a, b = same[0]
    sampler = make("dynamic", lengths, num_buckets=a)
    iter_ = iter(sampler)
    next(iter_)
    with pytest.raises(ValueError, match="would plan differently"):
        make("dynamic", lengths, num_buckets=b).load_state_dict(sampler.state_dict())
    make("dynamic", lengths, num_buckets=a).load_state_dict(sampler.state_dict())  # the same plan continues


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_get_equal_counts_and_no_duplicates_but_the_last_step(kind, world):
    lengths = skewed_lengths(1001)
    per_rank = [list(make(kind, lengths, num_replicas=world, rank=r, seed=0)) for r in range(world)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1
    steps = counts.pop()
    seen = [i for r in range(world) for b in per_rank[r][: steps - 1] for i in b]
    assert len(seen) == len(set(seen))  # duplicates only in the very last step
    everything = {i for r in range(world) for b in per_rank[r] for i in b}
    assert everything == set(range(len(lengths)))


def test_ddp_ranks_batches_in_one_step_have_similar_cost():
    lengths = skewed_lengths(5000)
    world = 4
    per_rank = [list(make("dynamic", lengths, num_replicas=world, rank=r)) for r in range(world)]
    spread = []
    for step in zip(*per_rank):
        longest = [lengths[b].max() for b in step]
        spread.append(max(longest) / min(longest))
    assert np.median(spread) < 1.2


def test_eval_sharding_has_no_duplicates():
    lengths = skewed_lengths(1001)
    shards = []
    for r in range(3):
        s = make("dynamic", lengths, num_replicas=3, rank=r, shuffle=False, even=False)
        shards.extend(i for b in s for i in b)
    assert sorted(shards) == list(range(len(lengths)))


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="length of example 1 is nan"):
        FixedBatchSampler([1.0, float("nan")], batch_size=2)


def test_mixed_batches_hold_neighbouring_buckets_and_change_every_epoch():
    # 400 lengths in 20 buckets that mostly fit in one batch: unmixed batches are nearly the
    # same groups every epoch (like the shipped speech corpus); mixing changes them, padding stays low
    lengths = np.random.default_rng(0).uniform(0.5, 1.5, 400)

    def groups(sampler, epoch):
        sampler.set_epoch(epoch)
        return {tuple(sorted(b)) for b in sampler}

    plain = DynamicBatchSampler(lengths, max_batch_length=40.0, num_buckets=20)
    mixed = DynamicBatchSampler(lengths, max_batch_length=40.0, num_buckets=20, mix_buckets=2)
    assert len(groups(plain, 0) & groups(plain, 1)) >= 0.9 * len(plain)
    assert len(groups(mixed, 0) & groups(mixed, 1)) == 0
    spans = [np.ptp(mixed.bucket_of_kept[np.searchsorted(mixed.kept, b)]) for b in mixed]
    assert np.mean([s == 1 for s in spans]) > 0.8 and max(spans) == 1  # two neighbouring buckets
    assert batch_stats(list(mixed), lengths)["padding_fraction"] < 0.1


def test_mixed_epochs_all_have_the_same_number_of_batches():
    # a learning-rate schedule sized from the first epoch must hold for every epoch
    lengths = skewed_lengths(5000)
    for budget in (30.0, 100.0, 400.0):
        sampler = DynamicBatchSampler(lengths, max_batch_length=budget, num_buckets=20, mix_buckets=3)
        counts = set()
        for epoch in range(10):
            sampler.set_epoch(epoch)
            counts.add(len(sampler))
        assert len(counts) == 1, (budget, counts)


def test_duration_boundaries_hold_equal_total_length():
    lengths = skewed_lengths(20000)
    edges = fit_bucket_boundaries(lengths, 10, "duration")
    assert len(edges) == 10 and edges[-1] == lengths.max()
    totals = np.bincount(np.searchsorted(edges, lengths), weights=lengths)
    assert np.allclose(totals, lengths.sum() / 10, rtol=0.01)
    with pytest.raises(ValueError, match="one of .*'duration'"):
        fit_bucket_boundaries(lengths, 10, "equal")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world", [2, 3])
def test_global_budget_splits_the_single_process_batches_across_ranks(kind, world):
    lengths = skewed_lengths(1001)
    single = list(make(kind, lengths, seed=2, epoch=1, budget="global"))
    per_rank = [list(make(kind, lengths, seed=2, epoch=1, budget="global", num_replicas=world, rank=r))
                for r in range(world)]
    assert all(len(batches) == len(single) for batches in per_rank)  # same optimizer steps per epoch
    for step, batch in enumerate(single):
        parts = [per_rank[r][step] for r in range(world)]
        assert {i for p in parts for i in p} == set(batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        if len(batch) >= world:  # smaller batches lend examples to the ranks they cannot fill
            assert sum(map(len, parts)) == len(batch)


def test_global_budget_lends_examples_to_ranks_a_batch_cannot_fill():
    lengths = [1.0, 9.0, 9.0, 1.0]  # budget 10: the 9 s examples are batches of one
    parts = [list(DynamicBatchSampler(lengths, max_batch_length=10.0, num_buckets=2, budget="global", num_replicas=2,
                                      rank=r, shuffle=False, batch_ordering="ascending")) for r in range(2)]
    assert parts == [[[0], [1], [2]], [[3], [1], [2]]]


def test_rank_budget_takes_fewer_steps_per_epoch_with_more_ranks():
    lengths = skewed_lengths(1001)
    single = len(make("dynamic", lengths))
    assert len(make("dynamic", lengths, num_replicas=2, rank=0)) == -(-single // 2)


def test_global_budget_resumes_mid_epoch_and_evaluation_shards_whole_batches():
    lengths = skewed_lengths(1001)
    sampler = make("mixed", lengths, seed=1, budget="global", num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    it = iter(sampler)
    consumed = [next(it) for _ in range(5)]
    fresh = make("mixed", lengths, seed=1, budget="global", num_replicas=2, rank=1)
    fresh.load_state_dict(sampler.state_dict())
    assert consumed + list(fresh) == full
    shards = [i for r in range(2) for b in make("mixed", lengths, budget="global", num_replicas=2, rank=r, even=False)
              for i in b]
    assert sorted(shards) == list(range(len(lengths)))


def test_bad_budget_and_mix_are_refused():
    with pytest.raises(ValueError, match="budget must be one of \\('rank', 'global'\\)"):
        FixedBatchSampler([1.0], batch_size=1, budget="local")
    with pytest.raises(ValueError, match="mix_buckets must be >= 1"):
        DynamicBatchSampler([1.0], max_batch_length=5.0, mix_buckets=0)


@pytest.mark.parametrize("mix_buckets", [1, 2])
def test_zero_length_examples_are_batched_within_the_budget(mix_buckets):
    lengths = np.array([0.0] * 10 + [1.0] * 10)
    sampler = DynamicBatchSampler(lengths, max_batch_length=4.0, num_buckets=2, mix_buckets=mix_buckets)
    batches = list(sampler)
    assert sorted(int(i) for b in batches for i in b) == list(range(20))
    assert all(len(b) * lengths[b].max() <= 4.0 for b in batches)
