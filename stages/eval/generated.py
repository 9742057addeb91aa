"""Benchmarks whose items come from a built-in generator of ``mgpo prepare`` (``shapes``,
``arithmetic``) instead of the hub or local files.

A subset names the generator levels it holds (``Subset("difficulty", levels)``): one level, or
several concatenated in order, so one evaluation can report accuracy per level. Items are exactly
what ``mgpo prepare NAME --split S --difficulty LEVEL`` writes with its defaults (seed 0, default
sizes), so a test split is never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.errors import MgpoError
from stages.eval.benchmark import Benchmark, Row, prompt_template


@dataclass(frozen=True)
class GeneratedBenchmark(Benchmark):
    """A benchmark generated locally; ``template`` is the one ``mgpo prepare NAME`` uses."""

    template: str = "short_answer"
    default_subset: str = ""  # the subset evaluated without --subset

    def levels(self, subset: str | None) -> tuple[str, ...]:
        """The generator levels of ``subset`` (the default subset when None)."""
        return self.subsets[subset or self.default_subset].values

    def load(
        self,
        source: str | Path | None = None,
        split: str | None = None,
        subset: str | None = None,
        limit: int | None = None,
        query: str | None = None,
        template: str | None = None,
    ) -> list[Row]:
        from stages.prepare import DATASETS, PrepareOptions

        split = self.check_options(split, subset, query)
        if source is not None:
            raise MgpoError(f"{self.name} is generated locally: --source does not apply")
        if limit is not None and limit < 0:
            raise MgpoError(f"--limit must be >= 0, got {limit}")
        render = prompt_template(template or self.template)
        rows: list[Row] = []
        for level in self.levels(subset):
            options = PrepareOptions(name=self.name, split=split, difficulty=level)
            for raw in DATASETS[self.name].problems(options):
                if limit is not None and len(rows) >= limit:
                    return rows
                index = len(rows)
                row = self.build_row(
                    raw, index, split, list(raw["images"]), query or self.queries[0]
                )
                row["prompt"] = render(row["prompt"])
                rows.append(row)
        return rows
