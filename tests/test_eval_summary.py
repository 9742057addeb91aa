"""Summary tables: several models side by side, breakdowns, and summary.json round trips."""

from __future__ import annotations

from rich.console import Console

from stages.eval import read_summary, render, results_table, write_summary
from stages.eval.summary import average, breakdown_table, detail_tables


def _summaries():
    def acc(correct, total):
        return {"correct": correct, "total": total, "accuracy": correct / total}

    mathvista = {
        "bench": "mathvista",
        **acc(3, 4),
        "headline": {"accuracy": 0.75},
        "breakdowns": {"task": {"geometry problem solving": acc(2, 2), "textbook qa": acc(1, 2)}},
    }
    wemath = {
        "bench": "wemath",
        **acc(5, 10),
        "headline": {"score_strict": 0.3, "score_loose": 0.45, "accuracy": 0.5},
        "four_dimensional": {
            "strict": {"score": 0.3, "IK": 0.4, "IG": 0.2, "CM": 0.2, "RM": 0.5},
            "loose": {"score": 0.45, "IK": 0.4, "IG": 0.2, "CM": 0.35, "RM": 0.125},
        },
        "steps": {"S1": 0.6, "S2": 0.5, "S3": 0.25},
        "breakdowns": {},
    }
    better = {
        "bench": "mathvista",
        **acc(4, 4),
        "headline": {"accuracy": 1.0},
        "breakdowns": {"task": {"geometry problem solving": acc(2, 2), "textbook qa": acc(2, 2)}},
    }
    return {"base": {"mathvista": mathvista, "wemath": wemath}, "mgpo": {"mathvista": better}}


def _text(table) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    return console.export_text()


def test_results_table_puts_models_side_by_side():
    text = _text(results_table(_summaries()))
    lines = text.splitlines()
    base = next(line for line in lines if line.strip().startswith("│ base"))
    mgpo = next(line for line in lines if line.strip().startswith("│ mgpo"))
    # base: mathvista 75.0, wemath strict 30.0, loose 45.0, accuracy 50.0, average (75+30)/2
    assert [c.strip() for c in base.split("│")[2:-1]] == ["75.0", "30.0", "45.0", "50.0", "52.5"]
    # mgpo has no wemath run: dashes, and no average over an incomplete suite
    assert [c.strip() for c in mgpo.split("│")[2:-1]] == ["100.0", "–", "–", "–", "–"]
    assert "score_strict" in text and "accuracy" in text and "avg" in text


def test_average_is_mean_of_first_headline_metrics():
    summaries = _summaries()
    assert average(summaries["base"], ["mathvista", "wemath"]) == (0.75 + 0.3) / 2
    assert average(summaries["mgpo"], ["mathvista", "wemath"]) is None


def test_breakdown_and_wemath_tables():
    text = _text(breakdown_table("mathvista", "task", _summaries()))
    row = next(line for line in text.splitlines() if "textbook qa" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == ["textbook qa", "2", "50.0", "100.0"]
    titles = [table.title for table in detail_tables(_summaries())]
    assert titles == ["mathvista: accuracy by task (%)", "wemath: four-dimensional metrics (%)"]
    wemath = _text(detail_tables(_summaries())[1])
    strict = next(line for line in wemath.splitlines() if "strict RM" in line)
    assert [c.strip() for c in strict.split("│")[1:-1]] == ["strict RM", "50.0", "–"]


def test_render_and_summary_json_round_trip(tmp_path):
    summaries = _summaries()
    path = write_summary(tmp_path / "summary.json", summaries["base"]["wemath"])
    assert read_summary(path) == summaries["base"]["wemath"]
    console = Console(record=True, width=200, color_system=None)
    render(console, summaries, details=True)
    text = console.export_text()
    assert "Results (%)" in text and "four-dimensional" in text and "accuracy by task" in text


def test_a_split_without_answers_shows_a_dash_and_its_note():
    summaries = _summaries()
    note = "mathvista test has no public answers: predictions only"
    summaries["mgpo"] = {
        "mathvista": {
            "bench": "mathvista",
            "total": 5,
            "headline": {"accuracy": None},
            "note": note,
        }
    }
    text = _text(results_table(summaries))
    mgpo = next(line for line in text.splitlines() if line.strip().startswith("│ mgpo"))
    assert [c.strip() for c in mgpo.split("│")[2:-1]] == ["–", "–", "–", "–", "–"]
    assert average(summaries["mgpo"], ["mathvista"]) is None
    console = Console(record=True, width=200, color_system=None)
    render(console, summaries)
    assert f"note: {note}" in console.export_text()
