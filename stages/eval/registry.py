"""The benchmarks ``mgpo eval`` knows, by name, and the paper's suite (``mgpo eval all``)."""

from __future__ import annotations

import difflib

from stages.errors import MgpoError
from stages.eval import (
    arithmetic,
    geometry3k,
    mathverse,
    mathvision,
    mathvista,
    shapes,
    wemath,
)
from stages.eval.benchmark import Benchmark

BENCHMARKS: dict[str, Benchmark] = {
    bench.name: bench
    for bench in (
        mathverse.BENCHMARK,
        mathvision.BENCHMARK,
        mathvista.BENCHMARK,
        wemath.BENCHMARK,
        geometry3k.BENCHMARK,
        shapes.BENCHMARK,  # built-in and offline; not in the paper's suite
        arithmetic.BENCHMARK,  # built-in, offline, text only; not in the paper's suite
    )
}
# The paper's Table 1: the four out-of-domain benchmarks plus the in-domain Geometry3K test.
SUITE: tuple[str, ...] = ("mathverse", "mathvision", "mathvista", "wemath", "geometry3k")
ALL = "all"


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; one-line MgpoError (with a suggestion) when unknown."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    match = difflib.get_close_matches(name.lower(), [*BENCHMARKS, ALL], n=1)
    hint = f" (did you mean '{match[0]}'?)" if match else ""
    raise MgpoError(f"unknown benchmark '{name}'{hint}; known: {', '.join(BENCHMARKS)}, {ALL}")


def resolve(name: str) -> list[Benchmark]:
    """``all`` as the paper's suite, otherwise the one named benchmark."""
    if name == ALL:
        return [BENCHMARKS[n] for n in SUITE]
    return [get_benchmark(name)]
