"""Process memory readings: right units, a reading without /proc, a peak that can restart."""

import mmap
import resource
import subprocess
import sys
import threading
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
    # 40 MiB of fresh pages, touched: a mapping of its own (numpy's buffer could reuse heap
    # pages that are already resident in a long test process, and RSS would not move)
    block = mmap.mmap(-1, 40 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        # one byte per page: a 40 MiB bytes object to write would stay resident after this
        # test where an earlier one made glibc keep freed blocks (keep_freed_memory)
        block[offset] = 1
    deadline = time.monotonic() + 5.0  # a loaded machine may run the sampler thread late
    while sampler._peak < base + 30 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.01)  # the thread's own samples (peak() would sample here itself)
    block.close()
    assert sampler.peak() >= base + 30 * 2**20
    sampler.reset()
    assert sampler.peak() < base + 30 * 2**20  # freed: the new peak starts from now


def test_a_reading_taken_before_reset_does_not_land_after_it(monkeypatch):
    """The sampler thread reads the RSS, a reset() comes, then the thread records its reading:
    the stale, higher reading must not become the new peak (it once did: a flaky test)."""
    high, low = 900 * 2**20, 100 * 2**20
    reading, release = threading.Event(), threading.Event()

    def rss() -> int:
        if threading.current_thread().name == "stale-sample":
            reading.set()
            release.wait(5.0)  # hold the reading while the reset is attempted
            return high
        return low

    monkeypatch.setattr(memory, "current_rss_bytes", rss)
    sampler = SampledPeak(period_s=3600.0)  # its own thread never samples during the test
    sample = threading.Thread(target=sampler._sample, name="stale-sample")
    sample.start()
    assert reading.wait(5.0)
    resetter = threading.Thread(target=sampler.reset)
    resetter.start()
    resetter.join(0.2)  # the reset runs now if nothing holds it back
    release.set()
    sample.join(5.0)
    resetter.join(5.0)
    assert sampler._peak == low


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_reused_not_faulted_in_again():
    """After keep_freed_memory, a freed 64 MB block comes back without fresh page faults."""
    assert memory.keep_freed_memory(1 << 30)
    faults = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(64 << 20, np.uint8)  # touches every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del block
    pages = (64 << 20) // resource.getpagesize()
    assert faults[1] < 0.1 * pages, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_released_freed_blocks_leave_the_resident_set():
    """What keep_freed_memory keeps for reuse, release_freed_memory hands back (between
    steps), a hole below a live block included."""
    if current_rss_bytes() is None:
        pytest.skip("no current-RSS reading here (Linux with /proc hidden)")
    assert memory.keep_freed_memory(1 << 30)
    block = np.ones(200 << 20, np.uint8)  # touches every page
    above = np.ones(8 << 20, np.uint8)  # live above it: the freed block is a hole, not the top
    del block
    kept = current_rss_bytes()
    assert memory.release_freed_memory()
    assert current_rss_bytes() < kept - (150 << 20)
    del above


_THREAD_FAULTS = """
import resource, sys, threading
import numpy as np
from gigamlx.core import memory
memory.keep_freed_memory(1 << 30)
if sys.argv[1] == "share":
    assert memory.share_one_heap()
faults = []
def tiles():  # as a thread computing tiles (or reading their windows) allocates and frees
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(40 << 20, np.uint8) for _ in range(3)]  # touches every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del blocks
thread = threading.Thread(target=tiles)
thread.start()
thread.join()
print(faults[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_threads_sharing_one_heap_reuse_freed_blocks():
    """A thread's freed blocks come back without fresh page faults once threads share the
    main heap; in heaps of its own (at most 64 MB each) one emptied heap is unmapped and the
    next round faults it in and zeroes it again."""

    def last_round_faults(mode: str) -> int:
        run = [sys.executable, "-c", _THREAD_FAULTS, mode]
        return int(subprocess.run(run, capture_output=True, text=True, check=True).stdout)

    # 40 MB is ~10k pages; transparent huge pages fault 2 MB at once, so the default's
    # count is a few hundred where they are on, ten thousand where they are off
    assert last_round_faults("own") > 200
    assert last_round_faults("share") < 50
