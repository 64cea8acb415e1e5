"""Run notebooks top to bottom with nbclient, and time them.

    python tests/nbrun.py notebooks/0*.ipynb            # full mode
    PACKNET_FAST=1 python tests/nbrun.py notebooks/0*.ipynb

tests/test_notebooks.py uses `execute` for CI; the command line prints each
notebook's wall time (the numbers quoted in notebooks/README.md).
"""
import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import nbclient
import nbformat


class SlicedPollClient(nbclient.NotebookClient):
    """nbclient waits for a cell's reply with a single zmq poll of `timeout`
    seconds. When the cell opens widgets, that poll sometimes misses the
    wake-up (jupyter/nbclient#312): the reply has arrived but the cell sits
    until the timeout (seen here: 1 run in 4 of notebook 3 waited the whole
    timeout). Polling in 1 s slices picks the reply up within a second; a cell
    that really runs too long still fails at `timeout`."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        get_msg = kc.shell_channel.get_msg

        async def sliced_get_msg(timeout=None):
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                step = 1.0 if deadline is None else min(1.0, max(0.0, deadline - loop.time()))
                try:
                    return await get_msg(timeout=step)
                except Empty:
                    if deadline is not None and loop.time() >= deadline:
                        raise

        kc.shell_channel.get_msg = sliced_get_msg
        return kc


def execute(path: Path, timeout: int = 600) -> tuple:
    """Execute notebook `path` in its folder; returns (notebook, seconds).
    Raises nbclient's CellExecutionError on the first failing cell."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = SlicedPollClient(nb, timeout=timeout, kernel_name="python3",
                              resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        _, seconds = execute(Path(arg))
        print(f"{Path(arg).name}: {seconds:.0f} s", flush=True)
