"""Data-parallel training over loopback: two ranks under `mlx.launch` (ring backend) match one
process with --accumulate 2, and a rank that dies or hangs stops the other within a bound.

Every process is started in its own session and killed by its group here, whatever happens.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gigamlx.backends.base import World, WorldError
from gigamlx.backends.mlx.distributed import RANK_LOST_EXIT, launched_backend

LIMIT_S = 240  # any one command of these tests
CLI = [sys.executable, "-c", "from gigamlx.cli import app; app()"]
SMALL = ["--region", "256x256", "--tile", "128", "--seed", "3", "--quiet"]


def _launcher() -> str:
    sibling = Path(sys.executable).with_name("mlx.launch")
    found = str(sibling) if sibling.exists() else shutil.which("mlx.launch")
    if found is None:
        pytest.skip("mlx.launch is not installed beside this Python")
    return found


def _free_ports(count: int) -> int:
    """A first port such that `count` consecutive ports are free on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count >= 65536:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError("no free consecutive ports on 127.0.0.1")


def _start(args, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group to kill, launcher and ranks alike
        text=True,
        **kwargs,
    )


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _run(args, env=None) -> str:
    """Run to the end within LIMIT_S; return the combined output."""
    process = _start(args, env)
    try:
        output, _ = process.communicate(timeout=LIMIT_S)
    finally:
        _kill(process)
    assert process.returncode == 0, output
    return output


def _train_two_ranks(slide, out, *extra) -> str:
    """`mlx.launch -n 2 --backend ring` of `gigamlx train`; it exits 0 even when a rank
    fails, so failures are read from its output."""
    args = [_launcher(), "-n", "2", "--backend", "ring", "--starting-port", str(_free_ports(2))]
    output = _run([*args, "--", *CLI, "train", slide, *SMALL, "--out", str(out), *extra])
    assert "exited with code" not in output and "was killed" not in output, output
    return output


@pytest.fixture(scope="module")
def slide(synth_store):
    return str(synth_store((512, 768), seed=1))


@pytest.mark.slow  # two mlx.launch ranks: .ci/run runs it once, in its slow step
def test_distributed_two_ranks_match_accumulate(slide, tmp_path):
    dump = str(tmp_path / "w_{rank}.npz")
    _train_two_ranks(slide, tmp_path / "two", "--steps", "3", "--dump-weights", dump)
    one = str(tmp_path / "one_{rank}.npz")
    single_args = ["--accumulate", "2", "--steps", "3", "--dump-weights", one]
    _run([*CLI, "train", slide, *SMALL, "--out", str(tmp_path / "one"), *single_args])
    rank0, rank1 = np.load(dump.format(rank=0)), np.load(dump.format(rank=1))
    single = np.load(one.format(rank=0))
    for name in single:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
        scale = np.abs(single[name]).max()
        assert np.abs(rank0[name] - single[name]).max() <= 1e-5 * scale, name
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    # rank 0 alone wrote the log, and alone validated (once, at the end)
    assert [(r["step"], r.get("kind", "step")) for r in rows] == [
        (0, "val"),
        (1, "step"),
        (2, "step"),
        (3, "step"),
        (3, "val"),
    ]
    assert {r["world_size"] for r in rows if "world_size" in r} == {2}
    # every rank kept the same moving average (checked after each step), rank 0 wrote it
    assert (tmp_path / "two" / "checkpoints" / "step_0000003" / "ema.safetensors").is_file()


@pytest.mark.slow  # two mlx.launch ranks: .ci/run runs it once, in its slow step
def test_distributed_resume_with_another_world_size(slide, tmp_path):
    out = tmp_path / "run"
    _run([*CLI, "train", slide, *SMALL, "--steps", "1", "--out", str(out)])
    _train_two_ranks(slide, out, "--resume", "--steps", "2")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [(r["step"], r["world_size"]) for r in rows if r.get("kind") != "val"]
    assert steps == [(1, 1), (2, 2)]
    assert (out / "checkpoints" / "step_0000002").is_dir()


def _two_ranks_by_hand(slide, out, *extra):
    """The two processes mlx.launch would start (ring env), without the launcher, which
    would otherwise kill the survivor itself: here the survivor has to notice on its own."""
    port = _free_ports(2)
    hostfile = out.parent / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    args = [*CLI, "train", slide, *SMALL, "--steps", "1000", "--out", str(out), *extra]
    return [_start(args, {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}) for rank in (0, 1)]


def _after_first_step(out: Path, ranks) -> None:
    deadline = time.monotonic() + LIMIT_S
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and '"loss"' in metrics.read_text()):  # a step line, not val
        assert all(r.poll() is None for r in ranks), ranks[0].communicate()[0]
        assert time.monotonic() < deadline, "no step finished in time"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_distributed_lost_rank_stops_the_other(slide, tmp_path, how):
    out = tmp_path / "run"
    ranks = _two_ranks_by_hand(slide, out, "--rank-timeout", "5", "--checkpoint-every", "1")
    try:
        _after_first_step(out, ranks)
        # SIGKILL closes its sockets (the peer sees that at once); SIGSTOP keeps them open,
        # which only the watchdog can end
        os.killpg(ranks[1].pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        started = time.monotonic()
        output, _ = ranks[0].communicate(timeout=LIMIT_S)
        waited = time.monotonic() - started
    finally:
        for rank in ranks:
            _kill(rank)
    if how == "killed":
        assert ranks[0].returncode == 1, output
        assert "lost the other ranks" in output and "last good checkpoint" in output, output
    else:
        assert ranks[0].returncode == RANK_LOST_EXIT, output
        assert "waited more than 5 s for the other ranks" in output, output
    assert waited < 60, waited
    assert (out / "checkpoints").is_dir()  # what rank 0 saved is still there


def test_launched_backend_reads_the_launcher_env(tmp_path):
    hosts, empty = tmp_path / "hosts.json", tmp_path / "empty"
    hosts.write_text('[["127.0.0.1:1"], ["127.0.0.1:2"]]')
    empty.write_text("\n")  # what `mlx.launch -n 1` writes
    assert launched_backend({}) is None
    assert launched_backend({"MLX_RANK": "0", "MLX_HOSTFILE": str(hosts)}) == "ring"
    assert launched_backend({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}) is None
    assert launched_backend({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"


def test_world_check_same_passes_equal_and_fails_different():
    # rank 0 of two, in one process: all_sum adds what rank 1 would send
    twin = World(0, 2, lambda buffer: buffer * 2)  # rank 1 holds the same weights
    twin.check_same("weights", b"weights")
    stranger = World(0, 2, lambda buffer: buffer + np.array([7.0, 49.0]))  # rank 1's hash: 7
    with pytest.raises(WorldError, match="ranks disagree on weights"):
        stranger.check_same("weights", b"weights")
    World.single().check_same("weights", b"anything")
