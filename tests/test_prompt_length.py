"""Prompt lengths counted without decoding pixels equal what the policy's encoder produces."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from stages.images import prompt_row
from stages.models.prompt_length import overlong_prompts, prompt_lengths

SIZES = [(112, 112), (56, 56), (300, 57), (1000, 20), (17, 900), (640, 480), (28, 28)]


def _png(width: int, height: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 7)).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _rows() -> list[dict]:
    rows = [
        {"id": f"one-{w}x{h}", "prompt": f"<image>What colour? {w}", "images": [_png(w, h)]}
        for w, h in SIZES
    ]
    rows.append(
        {"id": "two", "prompt": "a<image>b<image>c", "images": [_png(90, 30), _png(30, 90)]}
    )
    rows.append({"id": "text", "prompt": "No image at all, just text.", "images": []})
    return rows


def test_counts_equal_the_encoder(tiny_policy) -> None:
    _, policy_io = tiny_policy
    rows = _rows()
    expected = [policy_io.encode([prompt_row(dict(row))]).prompt_lengths[0] for row in rows]
    assert prompt_lengths(policy_io, rows) == expected
    assert len(set(expected)) > 3  # the sizes really give different lengths


def test_overlong_names_each_prompt_over_the_limit(tiny_policy) -> None:
    _, policy_io = tiny_policy
    rows = _rows()
    lengths = dict(zip([r["id"] for r in rows], prompt_lengths(policy_io, rows), strict=True))
    limit = sorted(lengths.values())[len(lengths) // 2]
    found = overlong_prompts(policy_io, iter(rows), limit)
    assert found == [(i, n) for i, n in lengths.items() if n > limit] and found


@pytest.mark.parametrize("data", [b"", b"not an image"])
def test_an_unreadable_image_is_named_with_its_place(tiny_policy, data: bytes) -> None:
    from stages.errors import MgpoError

    _, policy_io = tiny_policy
    rows = _rows()
    rows[3]["images"] = [{"bytes": data, "path": None}]
    with pytest.raises(MgpoError, match=r"^PLACE of one-1000x20: prompt 'one-1000x20': column"):
        overlong_prompts(policy_io, iter(rows), 10_000, where=lambda i: f"PLACE of {i}")
