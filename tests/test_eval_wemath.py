"""We-Math: letter reading in every format, and the four-dimensional metrics on groups that go
through every IK / IG / CM / RM case, strict and loose, checked against hand counts and against
the official formula ``(N - 0.5 IG - RM - IK) / N`` written out independently here."""

from __future__ import annotations

import pytest

from eval_fixtures import WEMATH_KEYS, tree, wemath_record, write_wemath
from stages.eval import get_benchmark, score_rows
from stages.eval.wemath import four_dimensions, parse_options, read_letter

BENCH = get_benchmark("wemath")

# (group id, sub-problem results..., composite result) and what each case is, by the paper.
TWO_STEP = {
    "2steps_1": ((True, True), True),  # CM strict, CM loose
    "2steps_2": ((True, False), True),  # RM strict, CM loose
    "2steps_3": ((False, False), True),  # RM strict, RM loose
    "2steps_4": ((True, True), False),  # IG
    "2steps_5": ((False, True), False),  # IK
    "2steps_6": ((False, False), False),  # IK
}
THREE_STEP = {
    "3steps_1": ((True, True, True), True),  # CM strict, CM loose
    "3steps_2": ((True, False, False), True),  # RM strict, CM loose
    "3steps_3": ((False, False, False), True),  # RM strict, RM loose
    "3steps_4": ((True, True, True), False),  # IG
    "3steps_5": ((True, True, False), False),  # IK
}
GOLD = "BCADB"  # gold letter cycles through these
RIGHT_FORMATS = [
    "<think>...</think> \\boxed{{{}}}",
    "<answer>{}</answer>",
    "Answer: {}",
    "<Thought process>: <<the areas add up>> <Answer>: <<{}>>",
    "So the correct answer is ({}).",
    "\\boxed{{{}. 3}}",
]
WRONG_LETTER = {"A": "B", "B": "C", "C": "D", "D": "E"}


def _dataset() -> tuple[list[dict], dict[str, str]]:
    records, responses, number = [], {}, 0
    for groups in (TWO_STEP, THREE_STEP):
        for group, (subs, multi) in groups.items():
            steps = group[0]
            for part, ok in [*((str(i + 1), s) for i, s in enumerate(subs)), ("multi", multi)]:
                gold = GOLD[number % len(GOLD)]
                key = f"{steps}steps_{part}"
                records.append(wemath_record(group, key, gold, number, f"concept {part}"))
                letter = gold if ok else WRONG_LETTER[gold]
                responses[f"wemath-{group}-{key}"] = RIGHT_FORMATS[number % 6].format(letter)
                number += 1
    return records, responses


RECORDS, RESPONSES = _dataset()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    source = write_wemath(tmp_path_factory.mktemp("wemath"), RECORDS)
    rows = BENCH.load(source=source)
    return score_rows(BENCH, rows, [RESPONSES[r["id"]] for r in rows])


def test_hub_snapshot_is_read_from_its_parquet_file_in_key_major_order(tmp_path):
    """The published tree has no README configs and a JSON copy beside the parquet file (the
    JSON's image paths point into testmini.zip); reading both used to crash."""
    source = write_wemath(tmp_path, RECORDS)
    assert tree(source) == [
        "README.md",
        "data/testmini-00000-of-00001-adbfe22dcd3558e6.parquet",
        "knowledge_structure_nodes.json",
        "testmini.json",
        "testmini.zip",
    ]
    rows = BENCH.load(source=source)
    assert len(rows) == len(RECORDS) == 38
    keys = [r["meta"]["key"] for r in rows]
    assert keys == sorted(keys, key=WEMATH_KEYS.index)  # all 2steps_1 rows first, as published
    assert keys[:6] == ["2steps_1"] * 6


@pytest.mark.parametrize(
    ("limit", "groups"),
    [
        (1, ["2steps_1"]),
        (2, ["2steps_1", "2steps_2"]),
        (7, [*TWO_STEP, "3steps_1"]),
        (100, [*TWO_STEP, *THREE_STEP]),
    ],
)
def test_limit_counts_whole_composite_problems(tmp_path, limit, groups):
    rows = BENCH.load(source=write_wemath(tmp_path, RECORDS), limit=limit)
    assert list(dict.fromkeys(r["meta"]["group"] for r in rows)) == groups
    expected = sum(3 if g.startswith("2") else 4 for g in groups)
    assert len(rows) == expected  # every sub-problem and the composite of each group
    scored = score_rows(BENCH, rows, [RESPONSES[r["id"]] for r in rows])
    dims = BENCH.summarise(scored)["four_dimensional"]
    assert dims["composite_problems"] == len(groups) and dims["incomplete_groups"] == 0


def test_load_plain_parquet_with_image_structs(tmp_path):
    rows = BENCH.load(source=write_wemath(tmp_path, RECORDS[:3]))
    row = rows[0]
    assert row["id"] == "wemath-2steps_1-2steps_1"
    assert row["choices"] == ["1", "2", "3", "4", "No correct answer"]
    assert row["meta"]["group"] == "2steps_1" and row["meta"]["key"] == "2steps_1"
    assert "Question: 2steps_1 2steps_1: which option?\nOption: A. 1;B. 2" in row["prompt"]
    assert row["images"][0].getpixel((1, 1)) == (0, 0, 200)


def test_every_row_scored_as_intended(scored):
    expected = {}
    for groups in (TWO_STEP, THREE_STEP):
        for group, (subs, multi) in groups.items():
            for i, ok in enumerate(subs):
                expected[f"wemath-{group}-{group[0]}steps_{i + 1}"] = ok
            expected[f"wemath-{group}-{group[0]}steps_multi"] = multi
    assert {r["prompt_id"]: r["correct"] for r in scored} == expected


def test_four_dimensions_by_hand(scored):
    summary = BENCH.summarise(scored)
    dims = summary["four_dimensional"]
    n = 11
    assert dims["composite_problems"] == n and dims["incomplete_groups"] == 0
    assert dims["counts"] == {
        "IK": 3,
        "IG": 2,
        "CM_strict": 2,
        "RM_strict": 4,
        "CM_loose": 4,
        "RM_loose": 2,
    }
    strict, loose = dims["strict"], dims["loose"]
    assert strict["score"] == pytest.approx(3 / 11)  # (CM 2 + IG 2 / 2) / 11
    assert loose["score"] == pytest.approx(5 / 11)  # (CM 4 + IG 2 / 2) / 11
    assert (strict["IK"], strict["IG"], strict["CM"]) == pytest.approx((3 / 11, 2 / 11, 2 / 11))
    assert strict["RM"] == pytest.approx(4 / 6)  # RM / (CM + RM), as the official rate
    assert (loose["IK"], loose["IG"], loose["CM"]) == pytest.approx((3 / 11, 2 / 11, 4 / 11))
    assert loose["RM"] == pytest.approx(2 / 6)
    assert summary["headline"]["score_strict"] == strict["score"]
    assert summary["headline"]["score_loose"] == loose["score"]
    # one-step (all sub-problems), two-step and three-step composite accuracies
    assert summary["steps"] == pytest.approx({"S1": 15 / 27, "S2": 3 / 6, "S3": 3 / 5})
    assert (summary["correct"], summary["total"]) == (21, 38)
    assert summary["accuracy"] == pytest.approx(21 / 38)


def _official_scores(cases: list[tuple[tuple[bool, ...], bool]]) -> tuple[float, float]:
    """The official script's arithmetic: (N - 0.5 IG - RM - IK) / N with its row filters."""
    n = len(cases)
    ig = sum(1 for subs, m in cases if all(subs) and not m)
    ik = sum(1 for subs, m in cases if (False in subs) and not m)
    rm_strict = sum(1 for subs, m in cases if (False in subs) and m)
    rm_loose = sum(1 for subs, m in cases if (True not in subs) and m)
    return (n - 0.5 * ig - rm_strict - ik) / n, (n - 0.5 * ig - rm_loose - ik) / n


def test_scores_match_the_official_formula_and_partition():
    cases = list(TWO_STEP.values()) + list(THREE_STEP.values())
    dims = four_dimensions([(len(subs), list(subs), m) for subs, m in cases])
    strict, loose = _official_scores(cases)
    assert dims["strict"]["score"] == pytest.approx(strict)
    assert dims["loose"]["score"] == pytest.approx(loose)
    counts = dims["counts"]
    for mode in ("strict", "loose"):  # every composite problem falls in exactly one case
        assert counts["IK"] + counts["IG"] + counts[f"CM_{mode}"] + counts[f"RM_{mode}"] == 11


def test_incomplete_group_is_left_out(scored):
    partial = [r for r in scored if r["prompt_id"] != "wemath-3steps_5-3steps_multi"]
    dims = BENCH.summarise(partial)["four_dimensional"]
    assert dims["composite_problems"] == 10 and dims["incomplete_groups"] == 1
    assert dims["counts"]["IK"] == 2  # 3steps_5 was an IK case


def test_samples_are_grouped_separately(scored):
    second = [dict(r, sample=1, correct=True) for r in scored]
    dims = BENCH.summarise(scored + second)["four_dimensional"]
    assert dims["composite_problems"] == 22
    assert dims["counts"]["CM_strict"] == 2 + 11


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("\\boxed{B}", "B"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("<answer>D</answer>", "D"),
        ("<answer> (A) 200.96 </answer>", "A"),
        ("Answer: E", "E"),
        ("<Answer>: <<B>>", "B"),
        ("**Answer:** C.", "C"),
        ("The final answer is D", "D"),
        ("B", "B"),
        ("Answer: Because the circle is bigger, it is A.", None),  # official would read "B"
        ("I am not sure about this one, it could be either option.", None),
    ],
)
def test_read_letter(response, letter):
    assert read_letter(response) == letter


def test_parse_options():
    assert parse_options("A. 200.96;B. 3215.36;C. 6280;D. 32; E. No correct answer") == [
        "200.96",
        "3215.36",
        "6280",
        "32",
        "No correct answer",
    ]
    assert parse_options("free text") is None
