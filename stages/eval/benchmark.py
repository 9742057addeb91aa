"""The benchmark spec every evaluation set fills in, and the plumbing shared by all of them.

A ``Benchmark`` turns raw dataset records into prompt rows (the COMMON row contract: ``id``,
``prompt`` with one ``<image>`` per image, ``images``, ``answer``, ``choices``, ``source``,
``meta``), scores one response against one row, and summarises scored rows into headline
numbers and breakdowns. Each benchmark module supplies the pure functions; this module owns
loading, validation (unknown split or subset -> ``MgpoError``) and the judge fallback.

Two things vary by benchmark beyond its functions: what ``--limit`` counts (rows, or whole units
such as We-Math's composite problems, whose four-dimensional metrics need every part), and
splits whose answers are not public (MathVista test): their summary reports predictions only.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stages.errors import MgpoError
from stages.eval import sources

# The training prompt template (think, then \\boxed{}), so eval asks exactly as training did.
DEFAULT_TEMPLATE = "math_think_boxed"
IMAGE_TOKEN = "<image>"

Row = dict[str, Any]


class AnswerJudge(Protocol):
    """What a scorer needs from a judge: an answer read from a response, or None."""

    def extract(self, question: str, response: str, hint: str) -> str | None: ...


@dataclass(frozen=True)
class Subset:
    """Rows whose ``column`` equals one of ``values`` (filtering happens before image decoding)."""

    column: str
    values: tuple[str, ...]

    def keep(self, record: Mapping[str, Any]) -> bool:
        return str(record.get(self.column)) in self.values


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: where it lives, how to prompt it, how to score and summarise it."""

    name: str
    hub_id: str
    splits: Mapping[str, int]  # split -> number of rows in the official release
    default_split: str
    # (raw record, index in split, split, images, query variant) -> prompt row whose prompt is
    # the bare benchmark query (``load`` adds image tokens and renders the template)
    build_row: Callable[[Row, int, str, list, str], Row]
    image_columns: tuple[str, ...]
    # rules: (row, response) -> answer text, or None when nothing answer-like is found
    extract: Callable[[Row, str], str | None]
    # (row, extracted or None) -> {"correct": bool, "normalised": str, ...}
    check: Callable[[Row, str | None], dict[str, Any]]
    summarise_rows: Callable[[list[Row]], dict[str, Any]]
    judge_hint: Callable[[Row], str]
    hub_configs: Mapping[str, str | None] = field(default_factory=dict)  # split -> config name
    subsets: Mapping[str, Subset] = field(default_factory=dict)
    queries: tuple[str, ...] = ("standard",)
    notes: str = ""  # where rule-based scoring may differ from the official LLM-judged numbers
    # A column naming whole units: --limit K keeps every row of its first K values (None: rows)
    limit_by: str | None = None
    unanswered_splits: tuple[str, ...] = ()  # splits released without answers
    max_new_tokens: int = 2048  # the response budget without --max-new-tokens

    def check_options(self, split: str | None, subset: str | None, query: str | None) -> str:
        """The split to use; one-line MgpoError for an unknown split, subset or query."""
        split = split or self.default_split
        if split not in self.splits:
            raise MgpoError(
                f"{self.name}: no split '{split}' (available: {', '.join(self.splits)})"
            )
        if subset is not None and subset not in self.subsets:
            known = ", ".join(self.subsets) or "none"
            raise MgpoError(f"{self.name}: no subset '{subset}' (available: {known})")
        if query is not None and query not in self.queries:
            raise MgpoError(
                f"{self.name}: no query '{query}' (available: {', '.join(self.queries)})"
            )
        return split

    def load(
        self,
        source: str | Path | None = None,
        split: str | None = None,
        subset: str | None = None,
        limit: int | None = None,
        query: str | None = None,
        template: str = DEFAULT_TEMPLATE,
    ) -> list[Row]:
        """Prompt rows of one split (hub, or the local copy ``source``), optionally a subset.

        ``template`` is a built-in prompt template name (``stages/prompt_templates``) or a Jinja file;
        it receives the benchmark's standard query as ``problem`` (choices already in it).
        """
        split = self.check_options(split, subset, query)
        if limit is not None and limit < 0:
            raise MgpoError(f"--limit must be >= 0, got {limit}")
        chosen = self.subsets.get(subset) if subset else None
        config = self.hub_configs.get(split)
        dataset, base = sources.open_split(self.hub_id, config, source, split, list(self.splits))
        where = f"{self.name} {split} ({source or self.hub_id})"
        indices = sources.select(
            dataset,
            where,
            keep=chosen.keep if chosen else None,
            filter_column=chosen.column if chosen else None,
            limit=limit,
            unit_column=self.limit_by,
        )
        records = sources.read_rows(dataset, indices, where)
        render = prompt_template(template)
        rows = []
        for index, record in zip(indices, records, strict=True):
            where = f"{self.name} {split} row {index}"
            images = self._images(record, base, where)
            try:
                row = self.build_row(record, index, split, images, query or self.queries[0])
            except KeyError as error:
                raise MgpoError(f"{where}: missing column {error}") from None
            except (TypeError, ValueError) as error:
                raise MgpoError(
                    f"{where}: unexpected record ({type(error).__name__}: {error})"
                ) from None
            row["prompt"] = render(with_image_tokens(row["prompt"], len(images)))
            rows.append(row)
        return rows

    def _images(self, record: Row, base: Path | None, where: str) -> list:
        value = sources.first_present(record, self.image_columns)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [sources.to_image(v, base, f"{where} image {i}") for i, v in enumerate(values)]

    def score(self, row: Row, response: str, judge: AnswerJudge | None = None) -> dict[str, Any]:
        """Score one response: rules first, the judge only when rules find no answer.

        Returns ``correct`` (bool), ``extracted`` (the answer read, "" if none), ``normalised``
        (what was compared with the gold answer) and ``via`` ("rule", "judge" or "none").
        """
        row = dict(row, meta=meta_of(row))
        extracted = self.extract(row, response)
        via = "rule"
        if extracted is None and judge is not None:
            extracted = judge.extract(question_text(row), response, self.judge_hint(row))
            via = "judge"
        if extracted is None:
            via = "none"
        result = self.check(row, extracted)
        return {"extracted": extracted or "", "via": via, **result}

    def summarise(self, scored: Iterable[Row], split: str | None = None) -> dict[str, Any]:
        """Headline numbers and breakdowns of scored rows (see ``scored_record``).

        For a split without public answers there is nothing to score against: the summary
        counts the predictions, its headline accuracy is None and ``note`` says why.
        """
        rows = [dict(r, meta=meta_of(r)) for r in scored]
        if split in self.unanswered_splits:
            body: dict[str, Any] = {
                "total": len(rows),
                "headline": {"accuracy": None},
                "note": f"{self.name} {split} has no public answers: predictions only, no "
                "accuracy (submit them to the benchmark's own evaluation)",
            }
        else:
            body = self.summarise_rows(rows)
        via = count_by(rows, lambda r: [str(r.get("via", "rule"))])
        return {"bench": self.name, **body, "via": via}


def meta_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's ``meta`` as a dict (shards store it as a JSON string)."""
    meta = row.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def question_text(row: Mapping[str, Any]) -> str:
    """The question shown to the model, without image tokens or our answer-format instruction."""
    return str(meta_of(row).get("question_text") or row.get("prompt", "")).replace(IMAGE_TOKEN, "")


def with_image_tokens(text: str, n_images: int) -> str:
    """``text`` with exactly one ``<image>`` per image (leading, unless the text places them)."""
    text = text.strip()
    if text.count(IMAGE_TOKEN) != n_images:
        text = IMAGE_TOKEN * n_images + text.replace(IMAGE_TOKEN, "").strip()
    return text


def choice_lines(choices: Sequence[str]) -> str:
    """Options as "(A) first" lines, the way MathVista's queries list them."""
    return "\n".join(f"({chr(ord('A') + i)}) {choice}" for i, choice in enumerate(choices))


def prompt_template(name_or_path: str) -> Callable[[str], str]:
    """Render function of a built-in prompt template (``stages/prompt_templates``) or a Jinja file.

    Templates see ``problem`` and ``choices`` as in ``mgpo prepare``; benchmark queries already
    list their choices, so ``choices`` is empty here.
    """
    from stages.prompt_templates import load_template, render

    template = load_template(name_or_path)
    return lambda problem: render(template, problem, None)


def scored_record(row: Row, response: str, result: Mapping[str, Any], sample: int = 0) -> Row:
    """One eval shard row: the prediction (as a rollout), its score and the benchmark fields."""
    return {
        "prompt_id": row["id"],
        "sample": sample,
        "response": response,
        "extracted": result.get("extracted", ""),
        "normalised": str(result.get("normalised", "")),
        "correct": bool(result.get("correct", False)),
        "via": result.get("via", "rule"),
        "answer": row.get("answer", ""),
        "source": row.get("source", ""),
        "meta": json.dumps(meta_of(row), ensure_ascii=False, default=str),
    }


def accuracy(rows: Sequence[Row]) -> dict[str, Any]:
    """``correct``, ``total`` and ``accuracy`` (0.0 for no rows) of scored rows."""
    correct = sum(1 for r in rows if r.get("correct"))
    return {
        "correct": correct,
        "total": len(rows),
        "accuracy": correct / len(rows) if rows else 0.0,
    }


def count_by(rows: Sequence[Row], keys: Callable[[Row], Iterable[str]]) -> dict[str, int]:
    """How many rows fall under each key (a row may have several keys, e.g. MathVista skills)."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        for key in keys(row):
            counts[key] += 1
    return dict(sorted(counts.items()))


def breakdown(rows: Sequence[Row], keys: Callable[[Row], Iterable[Any]]) -> dict[str, Any]:
    """Accuracy per group; ``keys`` gives the groups of a row (several for multi-label fields)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        for key in keys(row):
            if key is not None and key != "":
                groups[str(key)].append(row)
    return {key: accuracy(members) for key, members in sorted(groups.items())}


def meta_field(name: str) -> Callable[[Row], list[Any]]:
    """Group key reader for one ``meta`` field; list-valued fields give one group per item."""

    def keys(row: Row) -> list[Any]:
        value = row["meta"].get(name)
        return list(value) if isinstance(value, (list, tuple)) else [value]

    return keys


def accuracy_summary(
    breakdown_keys: Sequence[str] = (),
) -> Callable[[Sequence[Row]], dict[str, Any]]:
    """The summary most benchmarks give: overall accuracy as the headline, and accuracy per group
    of each ``meta`` field in ``breakdown_keys``."""

    def summarise(rows: Sequence[Row]) -> dict[str, Any]:
        overall = accuracy(rows)
        return {
            **overall,
            "headline": {"accuracy": overall["accuracy"]},
            "breakdowns": {key: breakdown(rows, meta_field(key)) for key in breakdown_keys},
        }

    return summarise


def score_rows(
    bench: Benchmark,
    rows: Sequence[Row],
    responses: Sequence[str],
    judge: AnswerJudge | None = None,
    samples: Sequence[int] | None = None,
) -> list[Row]:
    """Eval shard rows (``scored_record``) for responses aligned with ``rows``."""
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
    samples = samples if samples is not None else [0] * len(rows)
    return [
        scored_record(row, response, bench.score(row, response, judge), sample)
        for row, response, sample in zip(rows, responses, samples, strict=True)
    ]
