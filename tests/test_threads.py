"""trainer.num_threads: auto follows OMP_NUM_THREADS, else the cores shared among local ranks."""

from __future__ import annotations

import logging

import pytest
import torch

from framework.trainer import threads
from framework.trainer.threads import resolve_num_threads


def test_auto_takes_omp_num_threads_when_a_launcher_or_the_user_set_it(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_num_threads("auto", local_ranks=4) == 3
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it for each rank
    with caplog.at_level(logging.INFO, logger=threads.__name__):
        try:
            assert threads.set_num_threads("auto") == 1
        finally:
            torch.set_num_threads(before)
    assert "trainer.num_threads=auto: OMP_NUM_THREADS=1 in the environment fixes it, not measured" in caplog.text


def test_auto_shares_the_available_cores_among_local_ranks(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8.0)
    assert [resolve_num_threads("auto", ranks) for ranks in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(threads, "available_cores", lambda: 1.5)  # a cgroup quota of 1.5 CPUs
    assert resolve_num_threads("auto") == 1


@pytest.mark.parametrize("bad", ["many", 0, -2, True, 2.7, "1.5"])
def test_a_number_is_taken_as_it_is_and_nonsense_is_refused(bad):
    assert resolve_num_threads(5) == 5 and resolve_num_threads("2") == 2
    with pytest.raises(ValueError, match="trainer.num_threads must be auto or a whole number >= 1"):
        resolve_num_threads(bad)


def test_the_cgroup_quota_caps_the_affinity(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 2.5)
    assert threads.available_cores() == 2.5
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.available_cores() == 4
