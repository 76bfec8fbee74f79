"""Kill a running `sslr fit`, `sslr attack` or `sslr grid` with SIGKILL at a point the test
names (env SSLR_TEST_KILL).

Run as ``python tests/app/kill_points.py fit ...`` (or ``attack ...``, ``grid ...``): it
installs the kill point, then runs the CLI.
The process kills itself at exactly that point, so the test depends on no timing:

- ``step:<n>``: after training step n (mid-epoch, between checkpoints);
- ``save:<k>``: during the k-th checkpoint write, with half of the file's bytes written;
- ``say:<k>``: at the k-th progress line of ``sslr attack`` (mid-way through the suite; with
  SSLR_TEST_KILL_RANK=r, only rank r of a DDP attack);
- ``echo:<k>``: after the k-th line ``sslr grid`` prints (its stage lines and the attack
  stages' progress lines);
- ``marker:<k>``: right after ``sslr grid`` wrote its k-th stage marker (started or done).
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch


def _die() -> None:
    # SSLR_TEST_KILL_RANK: only that rank of a DDP launch dies (Lightning gives the processes it
    # starts their LOCAL_RANK; the one the user started is rank 0).
    only = os.environ.get("SSLR_TEST_KILL_RANK")
    if only is not None and int(os.environ.get("LOCAL_RANK") or 0) != int(only):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    kind, _, value = point.partition(":")
    n = int(value)
    if kind == "save":
        import sslr.checkpoints

        calls = {"n": 0}
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] < n:
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
            _die()

        sslr.checkpoints.torch = _Torch(save)
    elif kind == "step":
        # Wrapping a hook of the task (not the Trainer's __init__, whose signature the CLI reads).
        from sslr.tasks.base import FeedbackTask

        original = FeedbackTask.on_train_batch_end

        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            original(self, outputs, batch, batch_idx)
            if self.trainer.global_step == n:
                _die()

        FeedbackTask.on_train_batch_end = on_train_batch_end
    elif kind == "say":
        import sslr.trainer

        said = {"n": 0}
        real_say = sslr.trainer.rank_zero_info

        def say(message: str) -> None:
            real_say(message)
            said["n"] += 1
            if said["n"] == n:
                _die()

        sslr.trainer.rank_zero_info = say
    elif kind == "echo":
        import sslr.grid.stages

        lines = {"n": 0}
        real_echo = sslr.grid.stages.say_now

        def echo(line: str) -> None:
            real_echo(line)
            lines["n"] += 1
            if lines["n"] == n:
                _die()

        sslr.grid.stages.say_now = echo
    elif kind == "marker":
        import sslr.grid.stages

        written = {"n": 0}
        real_write = sslr.grid.stages.write_json

        def write_json(path, value) -> None:
            real_write(path, value)
            written["n"] += 1
            if written["n"] == n:
                _die()

        sslr.grid.stages.write_json = write_json
    else:
        raise SystemExit(f"unknown kill point {point!r}")


class _Torch:
    """``torch`` as sslr.checkpoints sees it, with ``save`` replaced."""

    def __init__(self, save) -> None:
        self.save = save

    def __getattr__(self, name: str):
        return getattr(torch, name)


if __name__ == "__main__":
    if os.environ.get("SSLR_TEST_KILL"):
        install(os.environ["SSLR_TEST_KILL"])
    from sslr.cli import main

    sys.exit(main(sys.argv[1:]))
