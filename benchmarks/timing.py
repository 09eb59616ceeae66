"""The one timer every benchmark uses: CPU and wall time, a warm-up, the median of n runs and their spread.

* :func:`race` times several sides (ours, the reference, ...) taking turns, so a busy spell of a shared
  machine slows all of them alike, and returns a :class:`Timing` per side;
* :func:`ratio` divides two sides run by run (each round's ours / reference) and reports the median
  ratio and its spread, which is steadier than a ratio of medians;
* a side that must do set-up work first returns :func:`timed` of the part to time.

Threads come from the environment (``OMP_NUM_THREADS``, which ``make bench`` sets to 1); :func:`setup`
applies it to torch and prints it with the versions. CPU time (``time.process_time``) counts only this
process's compute, so on a shared machine it is the steadier clock; wall time is printed beside it
(with one thread the two agree on an idle machine; with more, CPU time adds up the threads).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Split:
    """One measured run: seconds of CPU time and of wall time."""

    cpu: float
    wall: float


def timed(fn: Callable[[], object]) -> Split:
    """Time one call of ``fn`` (for a side that does untimed set-up before it)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return Split(time.process_time() - cpu, time.perf_counter() - wall)


@dataclass
class Timing:
    """The runs of one side; ``cpu`` and ``wall`` are lists of seconds."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def add(self, split: Split) -> None:
        self.cpu.append(split.cpu)
        self.wall.append(split.wall)

    def median(self, clock: str = "cpu") -> float:
        return statistics.median(getattr(self, clock))

    def __str__(self) -> str:
        return f"{_ms(self.cpu)} CPU, {_ms(self.wall)} wall"


def _ms(xs: list[float]) -> str:
    """Median and range of seconds, in milliseconds."""
    return f"{statistics.median(xs) * 1e3:.2f} ms [{min(xs) * 1e3:.2f}-{max(xs) * 1e3:.2f}]"


def race(sides: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
         number: int = 1) -> dict[str, Timing]:
    """Run every side ``warmup`` times, then ``repeats`` rounds in turn, each run ``number`` calls (for
    calls too short to time one by one; the time per call is kept). A side returning a :class:`Split`
    (from :func:`timed`) is credited with that, otherwise with the whole call."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    out = {name: Timing() for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            cpu = wall = 0.0
            for _ in range(number):
                whole = [time.process_time(), time.perf_counter()]
                inner = fn()
                split = inner if isinstance(inner, Split) else Split(time.process_time() - whole[0],
                                                                      time.perf_counter() - whole[1])
                cpu, wall = cpu + split.cpu, wall + split.wall
            out[name].add(Split(cpu / number, wall / number))
    return out


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, number: int = 1) -> Timing:
    """One side alone (see :func:`race`)."""
    return race({"only": fn}, repeats, warmup, number)["only"]


@dataclass(frozen=True)
class Ratio:
    """Round-by-round ratios ``a / b`` of two sides: median and range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        return f"{self.median:.2f}x [{min(self.values):.2f}-{max(self.values):.2f}]"


def ratio(a: Timing, b: Timing, clock: str = "cpu") -> Ratio:
    """``a / b`` for each round of a :func:`race` (below 1: ``a`` is faster)."""
    return Ratio(tuple(x / y for x, y in zip(getattr(a, clock), getattr(b, clock), strict=True)))


def report(name: str, ours: Timing, ref: Timing, extra: str = "") -> None:
    """Two lines: what was timed, then both sides' CPU-time medians [ranges] and the ratio ours / reference."""
    print(f"{name}{extra}")
    print(f"    ours {_ms(ours.cpu)}   reference {_ms(ref.cpu)}   ours / reference {ratio(ours, ref)} CPU, "
          f"{ratio(ours, ref, 'wall')} wall")


def setup() -> int:
    """Apply ``OMP_NUM_THREADS`` (default 1) to torch, quiet the reference's notices, print versions and
    threads; return the count."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()  # the reference says once per kernel that it runs plain PyTorch: we know
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset: 1')}); times: median [min-max] of the runs")
    return threads
