"""Scoring throughput (items/s) of each benchmark's scorer on synthetic predictions.

    OMP_NUM_THREADS=1 python benchmarks/eval_scoring.py [--items 400] [--rounds 3]

For each benchmark, ``--items`` rows are built from synthetic records in the benchmark's schema
(no images: scoring never looks at them) with responses in a realistic mix: right and wrong
boxed answers, letters, LaTeX fractions and expressions, answer phrases, and responses with no
answer. Every value depends on the item index, so math-verify's parse caches do not make later
items free. The baseline is plain exact match (last boxed answer == gold string) on the same
items, timed in the same round; rounds are interleaved and the median is shown.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from stages.eval import BENCHMARKS, score_rows
from stages.eval.answers import last_boxed
from stages.eval.benchmark import Benchmark, Row

NO_ANSWER = "I examined the figure but the labels are unreadable, so I cannot determine it."


def _mathvista(i: int) -> tuple[dict, str]:
    kind = i % 4
    base = {"pid": str(i), "question": f"q{i}", "unit": None, "metadata": {"task": "t"}}
    if kind == 0:
        choices = [str(i + k) for k in range(4)]
        record = {**base, "choices": choices, "answer": choices[i % 4], "precision": None}
        record |= {"question_type": "multi_choice", "answer_type": "text"}
        response = [f"\\boxed{{{chr(65 + i % 4)}}}", f"\\boxed{{{i + 1}}}", NO_ANSWER][i % 3]
    elif kind == 1:
        record = {**base, "choices": None, "answer": str(i), "precision": None}
        record |= {"question_type": "free_form", "answer_type": "integer"}
        response = [f"\\boxed{{{i}}}", f"The answer is {i + 1} cm.", f"\\boxed{{{i}.0}}"][i % 3]
    elif kind == 2:
        record = {**base, "choices": None, "answer": f"{i / 8:.2f}", "precision": 2.0}
        record |= {"question_type": "free_form", "answer_type": "float"}
        response = [f"\\boxed{{\\frac{{{i}}}{{8}}}}", f"\\boxed{{{i / 8:.3f}}}"][i % 2]
    else:
        record = {**base, "choices": None, "answer": f"[{i}, {i + 1}]", "precision": None}
        record |= {"question_type": "free_form", "answer_type": "list"}
        response = f"\\boxed{{[{i},{i + 1}]}}"
    return record, response


def _mathverse(i: int) -> tuple[dict, str]:
    base = {"sample_index": str(i), "problem_index": str(i // 5), "metadata": {"subject": "s"}}
    base["problem_version"] = ["Text Dominant", "Vision Only"][i % 2]
    if i % 2 == 0:
        question = f"Find it.\nChoices:\nA:{i}°\nB:{i + 1}°\nC:{i + 2}°\nD:{i + 3}°"
        record = {**base, "question": question, "answer": "B", "question_type": "multi-choice"}
        response = ["\\boxed{B}", f"\\boxed{{{i + 1}°}}", "\\boxed{C}", NO_ANSWER][i % 4]
    else:
        answer = f"\\frac{{{i}\\sqrt{{3}}}}{{2}}"
        record = {**base, "question": "", "answer": answer, "question_type": "free-form"}
        response = [
            f"\\boxed{{\\frac{{{i}}}{{2}}\\sqrt{{3}}}}",
            f"\\boxed{{{i}\\sqrt{{2}}}}",
            f"\\boxed{{\\dfrac{{{i}\\sqrt3}}{{2}}}}",
        ][i % 3]
    return {**record, "query_cot": record["question"], "query_wo": record["question"]}, response


def _mathvision(i: int) -> tuple[dict, str]:
    base = {"id": str(i), "question": f"Problem {i}", "level": 1 + i % 5, "subject": "s"}
    if i % 2 == 0:
        options = [str(i + k) for k in range(5)]
        record = {**base, "options": options, "answer": "C"}
        response = ["\\boxed{C}", f"\\boxed{{{i + 2}}}", "so the answer is D.", NO_ANSWER][i % 4]
    else:
        record = {**base, "options": [], "answer": f"{i / 4:.2f}"}
        response = [f"\\boxed{{\\frac{{{i}}}{{4}}}}", f"\\boxed{{{i / 4 + 0.001:.3f}}}"][i % 2]
    return record, response


def _wemath(i: int) -> tuple[dict, str]:
    group, part = divmod(i, 3)
    key = f"2steps_{'multi' if part == 2 else part + 1}"
    record = {
        "ID": f"2steps_{group}",
        "key": key,
        "question": f"q{i}",
        "option": "A. 1;B. 2;C. 3;D. 4",
        "answer": "ABCD"[i % 4],
        "knowledge concept": "c",
    }
    letter = "ABCD"[(i + i // 7) % 4]
    response = [f"\\boxed{{{letter}}}", f"<answer>{letter}</answer>", f"Answer: {letter}"][i % 3]
    return record, response


def _geometry3k(i: int) -> tuple[dict, str]:
    record = {"problem": f"<image>Find x{i}.", "answer": f"{i}\\sqrt{{3}}"}
    response = [
        f"<think>...</think> \\boxed{{{i}\\sqrt{{3}}}}",
        f"<think>...</think> \\boxed{{\\sqrt{{{3 * i * i}}}}}",
        f"<think>...</think> \\boxed{{{i + 1}}}",
        NO_ANSWER,
    ][i % 4]
    return record, response


SYNTHETIC: dict[str, Callable[[int], tuple[dict, str]]] = {
    "mathvista": _mathvista,
    "mathverse": _mathverse,
    "mathvision": _mathvision,
    "wemath": _wemath,
    "geometry3k": _geometry3k,
}


def items(bench: Benchmark, n: int, offset: int) -> tuple[list[Row], list[str]]:
    """``n`` prompt rows (built by the benchmark itself) and responses, values shifted by offset."""
    rows, responses = [], []
    for i in range(offset, offset + n):
        record, response = SYNTHETIC[bench.name](i + 1)
        rows.append(bench.build_row(record, i, bench.default_split, [], bench.queries[0]))
        responses.append(response)
    return rows, responses


def exact_match(rows: list[Row], responses: list[str]) -> int:
    """The baseline: last boxed answer equals the gold string."""
    pairs = zip(rows, responses, strict=True)
    return sum((last_boxed(response) or "").strip() == row["answer"] for row, response in pairs)


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for bench in BENCHMARKS.values():  # warm-up: imports, regex compilation, sympy caches
        score_rows(bench, *items(bench, 8, 10**6))
    results: dict[str, dict[str, list[float]]] = {
        name: {"scorer": [], "baseline": [], "summarise": []} for name in BENCHMARKS
    }
    accuracy: dict[str, float] = {}
    for round_index in range(args.rounds):
        for name, bench in BENCHMARKS.items():
            rows, responses = items(bench, args.items, offset=round_index * args.items)
            seconds, _ = timed(exact_match, rows, responses)
            results[name]["baseline"].append(seconds)
            seconds, scored = timed(score_rows, bench, rows, responses)
            results[name]["scorer"].append(seconds)
            seconds, _ = timed(bench.summarise, scored)
            results[name]["summarise"].append(seconds)
            accuracy[name] = sum(r["correct"] for r in scored) / len(scored)
    print(f"{args.items} items per benchmark, median of {args.rounds} rounds")
    header = f"{'benchmark':<11} {'scorer items/s':>15} {'exact-match items/s':>20} "
    print(header + f"{'slowdown':>9} {'summarise items/s':>18} {'accuracy':>9}")
    for name, times in results.items():
        scorer = args.items / statistics.median(times["scorer"])
        baseline = args.items / statistics.median(times["baseline"])
        summarise = args.items / statistics.median(times["summarise"])
        print(
            f"{name:<11} {scorer:>15.0f} {baseline:>20.0f} {baseline / scorer:>8.0f}x "
            f"{summarise:>18.0f} {accuracy[name]:>9.2f}"
        )


if __name__ == "__main__":
    main()
