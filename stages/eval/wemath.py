"""We-Math (Qiao et al., 2024, arXiv:2407.01284), ``We-Math/We-Math`` testmini (1,740 rows).

Hub snapshot: ``README.md`` (no ``configs`` block), ``data/testmini-00000-of-00001-*.parquet``
(images as structs), ``testmini.json`` (the same rows, ``image_path`` a path into
``testmini.zip``), ``testmini.zip``, ``knowledge_structure_nodes.json``: parquet is read. The
GitHub release is read too: pass its ``data/`` folder (``testmini.json``, images under
``2steps/image/`` and ``3steps/image/``, as its ``image_path`` values say).

Schema assumed (hub columns, case-insensitive): ``ID``, ``split``, ``knowledge concept``,
``question``, ``option`` (one string, "A. ...;B. ...;..."), ``answer`` (a letter),
``image_path`` (image), ``key``, ``question number``, ``knowledge concept description``.
Every testmini row belongs to a *composite problem*: the rows sharing an ``ID`` (``2steps_17``,
``3steps_4``) whose ``key`` is ``2steps_1``, ``2steps_2``, ``2steps_multi`` (a two-step problem:
two one-step sub-problems and the composite) or ``3steps_1`` .. ``3steps_3``, ``3steps_multi``
(three-step). 1,740 rows =
360 two-step x 3 + 165 three-step x 4, i.e. 525 composite problems. The file is ordered by key
(all 360 ``2steps_1`` rows first, then ``2steps_2``, ...), so ``--limit K`` counts composite
problems: it keeps every row of the first K IDs (``limit_by``), never a lone sub-problem.

Prompt: the official lead-in, "Question: ...", "Option: ...", then our answer format in place of
the official "<Thought process>: ... <Answer>: ..." instruction.

Answer: a letter A-H, read from the last ``\\boxed{}`` ("\\boxed{B}", "\\boxed{B. 32}"), the last
``<answer>B</answer>``, the official rule (text after the last "Answer", with ``<>:.`` removed),
an "answer is B" phrase, or a one-line response. Correct when it equals the gold letter.

Four-dimensional metrics, as the paper (Sec. 3.2) defines them and the official
``four_dimensional_metrics.py`` computes them, per composite problem, from the correctness of its
sub-problems (s_1..s_k) and of the composite (m):
- IK, insufficient knowledge: some s_i wrong and m wrong;
- IG, inadequate generalisation: every s_i right and m wrong;
- CM, complete mastery: strict: every s_i right and m right; loose: some s_i right and m right;
- RM, rote memorisation: strict: some s_i wrong and m right; loose: every s_i wrong and m right.
IK and IG are the same in both settings. Rates: IK, IG and CM over the number of composite
problems N; RM over CM + RM (the official ``RoteMemorization_rate``). Scores, as the official
``(N - 0.5 IG - RM - IK) / N``, which equals ``(CM + 0.5 IG) / N`` in each setting:
``score_strict`` and ``score_loose``. Also plain accuracy over all rows, the official one-step
(S1: all sub-problems), two-step (S2: 2-step composites) and three-step (S3: 3-step composites)
accuracies, and accuracy per knowledge concept.

Differences from the official scripts: N is the number of *complete* composite problems present
(the official code divides by a fixed 525, so a partial run or ``--limit`` reads low there);
incomplete groups are reported and left out of the four dimensions. The official letter rule
takes the first character after "Answer" even when it starts a word ("Answer: Because" -> B);
ours requires a standalone letter. Per-domain accuracy (the official knowledge-tree table) is
not computed; per-concept accuracy is.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from stages.eval.answers import answer_phrase, answer_tag, choice_letter, last_boxed, short_response
from stages.eval.benchmark import Benchmark, Row, accuracy, breakdown
from stages.eval.sources import first_present

LEAD_IN = (
    "Now, we require you to solve a multiple-choice math question. Please briefly describe your "
    "thought process and provide the final answer(option)."
)
_OFFICIAL_STRIP = re.compile(r"[<>:.]")
_KEY = re.compile(r"^(\d)steps_(\d|multi)$")


def parse_options(option: str) -> list[str] | None:
    """Choices from the one-string option field "A. x;B. y;..." (None when not in that shape)."""
    parts = [p.strip() for p in str(option or "").split(";") if p.strip()]
    found = [re.match(r"^([A-H])\s*[.:：)]\s*(.*)$", p) for p in parts]
    if not found or any(m is None for m in found):
        return None
    if [m.group(1) for m in found] != [chr(ord("A") + i) for i in range(len(found))]:
        return None
    return [m.group(2).strip() for m in found]


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    group = str(first_present(raw, ["ID"]))
    key = str(first_present(raw, ["key"]))
    option = str(first_present(raw, ["option", "options"]) or "")
    question = str(raw["question"])
    text = f"{LEAD_IN}\nQuestion: {question}\nOption: {option}"
    meta = {
        "group": group,
        "key": key,
        "knowledge_concept": first_present(raw, ["knowledge concept", "knowledge_concept"]),
        "question_number": first_present(raw, ["question number", "question_number"]),
        "question_text": f"Question: {question}\nOption: {option}",
    }
    return {
        "id": f"wemath-{group}-{key}",
        "prompt": text,
        "images": images,
        "answer": str(raw["answer"]).strip(),
        "choices": parse_options(option),
        "source": "wemath",
        "meta": meta,
    }


def official_letter(response: str) -> str | None:
    """The official rule: after the last "Answer", drop ``<>:.``, take a leading A-H letter."""
    if "Answer" not in response:
        return None
    tail = _OFFICIAL_STRIP.sub("", response.split("Answer")[-1]).strip()
    return choice_letter(tail)


def read_letter(response: str) -> str | None:
    """The option letter a response gives, trying the formats in order (see module doc)."""
    for reader in (last_boxed, answer_tag, official_letter, answer_phrase, short_response):
        found = reader(response)
        letter = choice_letter(found) if found else None
        if letter is not None:
            return letter
    return None


def extract(row: Row, response: str) -> str | None:
    return read_letter(response)


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    letter = choice_letter(extracted) if extracted else None
    return {
        "correct": letter is not None and letter == row["answer"].upper(),
        "normalised": letter or "",
    }


def _groups(rows: list[Row]) -> tuple[list[tuple[int, list[bool], bool]], int]:
    """Complete composite problems as (steps, sub-problem results, composite result), and the
    number of incomplete groups. Groups are keyed by sample, step count and ID."""
    parts: dict[tuple[Any, int, str], dict[str, bool]] = defaultdict(dict)
    for row in rows:
        match = _KEY.match(str(row["meta"].get("key", "")))
        if match is None:
            continue
        steps, part = int(match.group(1)), match.group(2)
        parts[(row.get("sample", 0), steps, str(row["meta"].get("group")))][part] = bool(
            row.get("correct")
        )
    complete, incomplete = [], 0
    for (_, steps, _), found in sorted(parts.items(), key=lambda item: str(item[0])):
        needed = [str(i) for i in range(1, steps + 1)]
        if "multi" in found and all(p in found for p in needed):
            complete.append((steps, [found[p] for p in needed], found["multi"]))
        else:
            incomplete += 1
    return complete, incomplete


def four_dimensions(groups: list[tuple[int, list[bool], bool]]) -> dict[str, Any]:
    """IK, IG, CM, RM counts, rates and strict/loose scores of complete composite problems."""
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "RM_strict", "CM_loose", "RM_loose"), 0)
    for _, subs, multi in groups:
        if not multi:
            counts["IG" if all(subs) else "IK"] += 1
            continue
        counts["CM_strict" if all(subs) else "RM_strict"] += 1
        counts["CM_loose" if any(subs) else "RM_loose"] += 1
    n = len(groups)

    def rate(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    result: dict[str, Any] = {"composite_problems": n, "counts": counts}
    for mode in ("strict", "loose"):
        cm, rm = counts[f"CM_{mode}"], counts[f"RM_{mode}"]
        result[mode] = {
            "score": rate(n - 0.5 * counts["IG"] - rm - counts["IK"], n),
            "IK": rate(counts["IK"], n),
            "IG": rate(counts["IG"], n),
            "CM": rate(cm, n),
            "RM": rate(rm, cm + rm),
        }
    return result


def summarise(rows: list[Row]) -> dict[str, Any]:
    overall = accuracy(rows)
    groups, incomplete = _groups(rows)
    dims = four_dimensions(groups)
    subs = [ok for _, results, _ in groups for ok in results]
    by_steps = {s: [multi for steps, _, multi in groups if steps == s] for s in (2, 3)}
    steps_accuracy = {
        "S1": sum(subs) / len(subs) if subs else 0.0,
        "S2": sum(by_steps[2]) / len(by_steps[2]) if by_steps[2] else 0.0,
        "S3": sum(by_steps[3]) / len(by_steps[3]) if by_steps[3] else 0.0,
    }
    return {
        **overall,
        "headline": {
            "score_strict": dims["strict"]["score"],
            "score_loose": dims["loose"]["score"],
            "accuracy": overall["accuracy"],
        },
        "four_dimensional": {**dims, "incomplete_groups": incomplete},
        "steps": steps_accuracy,
        "breakdowns": {
            "knowledge_concept": breakdown(rows, lambda r: [r["meta"].get("knowledge_concept")]),
            "key": breakdown(rows, lambda r: [r["meta"].get("key")]),
        },
    }


def judge_hint(row: Row) -> str:
    return "the option letter (A-H) the response chooses"


BENCHMARK = Benchmark(
    name="wemath",
    hub_id="We-Math/We-Math",
    splits={"testmini": 1740},
    default_split="testmini",
    build_row=build_row,
    image_columns=("image_path", "image"),
    extract=extract,
    check=check,
    summarise_rows=summarise,
    judge_hint=judge_hint,
    notes="N = complete composite problems present (official: fixed 525); --limit counts them",
    limit_by="ID",  # --limit K: K composite problems
)
