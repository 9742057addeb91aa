"""Scoring throughput on Geometry3K-style responses, and the cost of a pathological item.

Prints responses/s for:
  extract   last_boxed + has_think_format in this process (the floor: no comparison at all)
  inline    math_reward in this process, no time limit (the comparison itself)
  pool K    score_items(..., workers=K, timeout_s) (comparison + worker processes + time limit)
with ratios against ``inline`` measured in the same run, then for each pathological item the
seconds from handing it to a worker to getting its (timed-out) row, and what a fresh
interpreter needs to import the scorer (what ``spawn`` would pay to replace a killed worker).

    OMP_NUM_THREADS=1 python benchmarks/score_throughput.py [--items 600] [--timeout 5]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time

from stages.score.extract import has_think_format, last_boxed
from stages.score.math_reward import math_reward
from stages.score.runner import score_items


def random_answer(rng: random.Random) -> tuple[str, str]:
    """(reference, an equivalent way a model may write it) in the shapes of Geometry3K answers.

    Numbers are drawn at random so that math-verify's parse cache rarely hits, as with real
    responses (a fixed small answer set would make the comparison look cheaper than it is).
    """
    n, a, b = rng.randint(2, 400), rng.randint(2, 30), rng.choice([2, 3, 5, 6, 7])
    p, q = rng.randint(5, 99), rng.choice([3, 7, 11, 13])
    k = rng.randint(2, 30)
    shapes = [
        (str(n), str(n)),
        (str(n), f"{n}^\\circ"),
        (str(n), f"{n} \\text{{ cm}}"),
        (str(n), f"x = {n}"),
        (f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"),
        (f"{a}\\sqrt{{{b}}}", f"{a} \\sqrt {b}"),
        (f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}"),
        (f"{n}.5", f"\\frac{{{2 * n + 1}}}{{2}}"),
        (f"{k * 3.141592653589793:.2f}", f"{k}\\pi"),
        (f"\\frac{{\\sqrt{{{b}}}}}{{2}}", f"\\frac{{\\sqrt{{{b}}}}}{{2}}"),
    ]
    return rng.choice(shapes)


REASONING = (
    "Let the triangle be ABC with the right angle at C. By the Pythagorean theorem "
    "$AB^2 = AC^2 + BC^2$, and the angles of a triangle sum to $180^\\circ$, so we compute the "
    "missing side and then the requested quantity step by step. "
)
PATHOLOGICAL = [
    "9^{9^{9}}",
    "10^{10^{10^{10}}}",
    "(1+\\sqrt{2})^{100000}",
    "(10^{100})!",
]


def make_items(n: int, seed: int = 0) -> list[dict]:
    """40% right (often in another form), 40% wrong, 20% without a box; 5 samples a prompt."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        answer, variant = random_answer(rng)
        kind = rng.random()
        think = "<think>" + REASONING * rng.randint(1, 4) + "</think>\n"
        if kind < 0.4:
            tail = f"The answer is $\\boxed{{{rng.choice([answer, variant])}}}$."
        elif kind < 0.8:
            tail = f"The answer is $\\boxed{{{random_answer(rng)[1]}}}$."
        else:
            tail = f"The answer is {answer}."
        items.append(
            {
                "prompt_id": f"g{i // 5}",
                "sample": i % 5,
                "response": think + tail,
                "answer": answer,
                "choices": None,
            }
        )
    return items


def rate(label: str, n: int, seconds: float, baseline: float | None) -> float:
    per_s = n / seconds
    ratio = f"  {per_s / baseline:6.3f}x inline" if baseline else ""
    print(f"{label:<22}{per_s:10.1f} responses/s  ({seconds:6.2f} s){ratio}")
    return per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    items = make_items(args.items)

    start = time.perf_counter()
    for item in items:
        last_boxed(item["response"])
        has_think_format(item["response"])
    rate("extract (in-process)", len(items), time.perf_counter() - start, None)

    math_reward(items[0]["response"], items[0]["answer"])  # import / first-parse warm-up
    start = time.perf_counter()
    inline = [math_reward(it["response"], it["answer"], it["choices"]) for it in items]
    baseline = rate("inline math_reward", len(items), time.perf_counter() - start, None)
    print(f"  accuracy {sum(r['accuracy'] for r in inline) / len(inline):.3f}")

    for workers in (1, 2):
        start = time.perf_counter()
        list(score_items([], "math", workers=workers, timeout_s=args.timeout))
        print(
            f"pool workers={workers} start-up and shut-down, no items: "
            f"{time.perf_counter() - start:.2f} s (included below)"
        )
        start = time.perf_counter()
        rows = list(score_items(items, "math", workers=workers, timeout_s=args.timeout))
        rate(f"pool workers={workers}", len(items), time.perf_counter() - start, baseline)
        same = all(r["reward"] == i["reward"] for r, i in zip(rows, inline, strict=True))
        print(f"  same rewards as inline: {same}; timed out: {sum(r['timed_out'] for r in rows)}")

    # Pathological items, one worker, each between two normal ones: the gap between the rows
    # before and after it is its cost (time limit + kill + replacement worker).
    print(f"pathological items, timeout_s={args.timeout:g}:")
    normal = items[0]
    sequence = [normal]
    for latex in PATHOLOGICAL:
        sequence += [{**normal, "response": f"<think>x</think>\\boxed{{{latex}}}"}, normal]
    stamps = []
    for row in score_items(sequence, "math", workers=1, timeout_s=args.timeout):
        stamps.append((time.perf_counter(), row))
    for k, latex in enumerate(PATHOLOGICAL):
        (t0, _), (t1, row), (t2, _) = stamps[2 * k : 2 * k + 3]
        print(f"  {latex:<26} {t1 - t0:6.2f} s to its row  timed_out={row['timed_out']}")
    worst = max(stamps[2 * k + 1][0] - stamps[2 * k][0] for k in range(len(PATHOLOGICAL)))
    over = worst - args.timeout
    print(f"  worst case {worst:.2f} s per pathological item ({over:+.2f} s over the limit)")

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import stages.score.math_reward"], check=True)
    print(
        f"fresh interpreter importing the scorer (spawn's cost per replacement): "
        f"{time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
