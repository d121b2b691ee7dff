"""Process memory readings: right units, a reading without /proc, a peak that can restart."""

import time

import numpy as np
import pytest

from gigamlx.core import memory
from gigamlx.core.memory import SampledPeak, current_rss_bytes, peak_rss_bytes


def test_rss_readings_are_bytes():
    now, peak = current_rss_bytes(), peak_rss_bytes()
    if now is None:
        pytest.skip("no current-RSS reading here (Linux with /proc hidden)")
    assert 10 * 2**20 < now < 1.05 * peak < 64 * now  # KiB read as bytes: 1024x off


def test_current_rss_without_proc_asks_psutil(monkeypatch, tmp_path):
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(memory, "_STATM", tmp_path / "missing")
    try:
        expected = psutil.Process().memory_info().rss
    except psutil.Error:
        expected = None  # Linux with /proc hidden: psutil reads /proc too
    got = current_rss_bytes()
    if expected is None:
        assert got is None
    else:
        assert abs(got - expected) < 64 * 2**20


def test_current_rss_unknown_is_none_not_zero(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_STATM", tmp_path / "missing")
    monkeypatch.setattr(memory, "psutil", None)
    assert current_rss_bytes() is None


def test_sampled_peak_sees_a_short_allocation_and_restarts():
    if current_rss_bytes() is None:
        pytest.skip("no current-RSS reading here (Linux with /proc hidden)")
    sampler = SampledPeak(period_s=0.001)
    sampler.reset()
    base = sampler.peak()
    block = np.ones(40 * 2**20 // 8)  # 40 MiB, touched
    time.sleep(0.05)
    del block
    time.sleep(0.01)
    assert sampler.peak() >= base + 30 * 2**20
    sampler.reset()
    assert sampler.peak() < base + 30 * 2**20  # freed: the new peak starts from now
