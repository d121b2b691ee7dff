"""The data-parallel World on mx.distributed: the group `mlx.launch` set up, and a watchdog.

`mlx.launch` starts one process per rank and tells each, through the environment, which
backend to join (ring: MLX_RANK and MLX_HOSTFILE; jaccl, NCCL and MPI have their own). Without
those variables the process is a world of one. A collective waiting on a rank that hangs or
whose machine vanished would block forever, so every wait runs under a watchdog that ends the
process with RANK_LOST_EXIT; a rank that exits closes its sockets, and the others see that at
their next collective as a WorldError.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np

from gigamlx.backends.base import World, WorldError

log = logging.getLogger(__name__)
RANK_LOST_EXIT = 3  # exit status when the watchdog gives up on the other ranks


def launched_backend(env: Mapping[str, str] | None = None) -> str | None:
    """The mx.distributed backend the launcher set up for this process, or None (one process).

    `mlx.launch` on a single host writes an empty MLX_HOSTFILE, which mx.distributed.init
    rejects; that is a world of one, too.
    """
    env = os.environ if env is None else env
    if env.get("MLX_IBV_DEVICES"):
        return "jaccl"
    hostfile = env.get("MLX_HOSTFILE")
    if hostfile:
        path = Path(hostfile)
        return "ring" if not path.is_file() or path.read_text().strip() else None
    if int(env.get("MLX_WORLD_SIZE", "1")) > 1:
        return "nccl"
    if int(env.get("OMPI_COMM_WORLD_SIZE", env.get("PMI_SIZE", "1"))) > 1:
        return "mpi"
    return None


@contextmanager
def watchdog(timeout_s: float, what: str) -> Iterator[None]:
    """Ends the process with RANK_LOST_EXIT if the block takes longer than `timeout_s`.

    A blocked collective cannot be interrupted from Python, so the only bounded way out is to
    exit; checkpoints are written atomically, so the last one stays valid.
    """

    def expire() -> None:
        message = (
            f"gigamlx: waited more than {timeout_s:g} s for the other ranks ({what}): "
            "one of them hung or its machine is unreachable. "
            "Stopping; resume from the last checkpoint with --resume (raise --rank-timeout "
            "if ranks are just slow)."
        )
        log.error(message)
        print(message, file=sys.stderr, flush=True)
        os._exit(RANK_LOST_EXIT)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@functools.cache
def mlx_world(timeout_s: float = 600.0) -> World:
    """This process's World: the launcher's group, or a world of one when not launched.

    Args:
        timeout_s: longest wait for the other ranks, in joining and in each collective.

    Raises:
        WorldError: launched, but the group could not be formed.
    """
    backend = launched_backend()
    if backend is None:
        return World.single()
    joining = f"rank {os.environ.get('MLX_RANK', '?')} joining the {backend} group"
    with watchdog(timeout_s, joining):
        try:
            group = mx.distributed.init(strict=True, backend=backend)
        except RuntimeError as error:
            raise WorldError(f"cannot join the {backend} group: {error}") from error
    if group.size() == 1:
        return World.single()
    log.info("rank %d of %d (mx.distributed %s)", group.rank(), group.size(), backend)
    return World(group.rank(), group.size(), _all_sum(group, timeout_s))


def _all_sum(group: mx.distributed.Group, timeout_s: float):
    """A float64 numpy all_sum over `group`, under the watchdog; bit-identical on every rank."""
    rank, size = group.rank(), group.size()

    def all_sum(buffer: np.ndarray) -> np.ndarray:
        # float64 on the CPU stream: the ring backend sums on the CPU, and float64 keeps the
        # averaged gradient as exact as one process accumulating the same regions.
        local = mx.array(np.ascontiguousarray(buffer, np.float64), dtype=mx.float64)
        with watchdog(timeout_s, f"rank {rank} of {size} in all_sum"):
            try:
                summed = mx.distributed.all_sum(local, group=group, stream=mx.cpu)
                mx.eval(summed)  # sync point: waits for every rank
            except RuntimeError as error:
                raise WorldError(
                    f"rank {rank} of {size} lost the other ranks ({error}): one of them stopped "
                    "or its machine is unreachable; its own output says why"
                ) from error
        return np.array(summed, dtype=np.float64)

    return all_sum
