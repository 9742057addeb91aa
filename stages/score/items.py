"""One score item: its checks, one call of the reward function, and in-process scoring.

The worker pool (:mod:`stages.score.runner`) and the in-process path for rewards that cannot
hang share these, so an item is checked, called and turned into a row the same way on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from stages.errors import MgpoError
from stages.score.rewards import check_result, load_reward_fn


def item_name(item: Mapping[str, Any]) -> str:
    return f"prompt_id={item.get('prompt_id')!r} sample={item.get('sample')!r}"


def check_item(index: int, item: Any, options: Mapping[str, Any]) -> None:
    if not isinstance(item, Mapping):
        raise MgpoError(f"score item {index} is a {type(item).__name__}, not a dict")
    for key in ("response", "answer"):
        if not isinstance(item.get(key), str):
            raise MgpoError(f"score item {index} ({item_name(item)}): {key!r} is not a string")
    clash = sorted(set(options) & set(item))
    if clash:
        raise MgpoError(f"reward option(s) {clash} clash with item fields of the same name")


def reward_error(spec: str, item: Mapping[str, Any], message: str) -> MgpoError:
    """The one-line error of a reward function that failed on ``item``."""
    return MgpoError(f"reward function {spec!r} on item {item_name(item)}: {message}")


def score_row(
    item: Mapping[str, Any], result: Mapping[str, Any], *, timed_out: bool, non_finite: bool
) -> dict[str, Any]:
    """The row of a scored item: its identity, the reward's result and the two flags."""
    return {
        "prompt_id": item.get("prompt_id"),
        "sample": item.get("sample"),
        **result,
        "timed_out": timed_out,
        "non_finite": non_finite,
    }


def call_reward(fn: Any, item: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """One item's checked result: ``fn(response, answer, **other fields, **options)``."""
    fields = {k: v for k, v in item.items() if k not in ("response", "answer")}
    return check_result(fn(item["response"], item["answer"], **fields, **options))


def score_in_process(
    items: Iterable[Mapping[str, Any]], spec: str, options: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    """Rows of a reward that cannot hang, scored in this process: the rows the workers give."""
    fn = load_reward_fn(spec)
    for index, item in enumerate(items):
        check_item(index, item, options)
        try:
            result = call_reward(fn, item, options)
        except Exception as exc:
            raise reward_error(spec, item, f"{type(exc).__name__}: {exc}") from exc
        non_finite = bool(result.pop("non_finite", False))
        yield score_row(item, result, timed_out=False, non_finite=non_finite)
