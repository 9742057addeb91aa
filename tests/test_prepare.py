"""``mgpo prepare`` and ``mgpo shards`` end to end: the CLI as a subprocess on local data.

Every run is independent, so the module fixtures start them side by side and the tests only look
at the results (a CLI start costs about a second on a small machine).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    assert_nothing_left,
    assert_user_error,
    cli_command,
    cli_env,
    geometry3k_columns,
    make_geometry3k_jsonl,
    make_geometry3k_parquet,
    make_intergps,
    png_bytes,
    run_cli,
    run_main,
    run_many,
    write_geometry3k_parquet,
)
from mgpo_cli import __version__
from stages.errors import MgpoError
from stages.shards import MANIFEST, open_shards, prompt_row, staging_dir

DEFAULT_MIN, DEFAULT_MAX = 262_144, 4_194_304  # geometry3k's pixel bounds
SIZES = [(64, 48), (300, 200), (120, 120), (10, 400)]  # below, above, inside, thin
TEMPLATE = "Q: {{ problem }}{% for c in choices %} ({{ loop.index }}) {{ c }}{% endfor %}"


def rows(out: Path) -> list[dict]:
    return [prompt_row(row) for row in open_shards(out, kind="prompts").iter_rows()]


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# ----------------------------------------------------------------------------- good inputs


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Local copies in every supported layout."""
    root = tmp_path_factory.mktemp("good")
    hub = root / "hub" / "data"  # a snapshot of the hub repository: split-named files
    make_geometry3k_parquet(hub, 6, "train")
    make_geometry3k_parquet(hub, 3, "validation")
    make_geometry3k_parquet(hub, 4, "test")
    sized = geometry3k_columns(len(SIZES))
    sized["images"] = [[{"bytes": png_bytes(w, h), "path": None}] for w, h in SIZES]
    write_geometry3k_parquet(root / "single" / "geo.parquet", sized)
    make_geometry3k_jsonl(root / "json", 4, "train")
    array = [
        {"images": [f"img/train-{i}.png"], "problem": f"<image>Array {i}", "answer": f"a{i}"}
        for i in range(2)
    ]
    (root / "json" / "validation.json").write_text(json.dumps(array))
    make_intergps(root / "Geometry3K", 5)
    (root / "template.jinja").write_text(TEMPLATE)
    return root


@pytest.fixture(scope="module")
def good(sources: Path) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """One CLI run per source layout, side by side."""
    calls = {
        # a parquet file of Hugging Face image structs, images resized into explicit bounds
        "file": [
            "--source",
            "single/geo.parquet",
            "--min-pixels",
            "10000",
            "--max-pixels",
            "20000",
        ],
        "hub_validation": ["--source", "hub", "--split", "validation"],
        "jsonl": ["--source", "json/train.jsonl"],
        # a relative Inter-GPS path, as a user types it, and a Jinja template file
        "intergps": ["--source", "Geometry3K", "--split", "test", "--template", "template.jinja"],
    }
    outs = {name: sources / "out" / name for name in calls}
    results = run_many(
        [
            (["prepare", "geometry3k", *args, "--out", outs[name]], sources)
            for name, args in calls.items()
        ]
    )
    return {name: (result, outs[name]) for name, result in zip(calls, results, strict=True)}


def prepared(good, name: str) -> list[dict]:
    result, out = good[name]
    assert_ok(result)
    assert not staging_dir(out).exists()
    return rows(out)


def assert_prompt_contract(items: list[dict]) -> None:
    assert len({item["id"] for item in items}) == len(items)
    for item in items:
        assert item["source"] == "geometry3k"
        assert item["prompt"].count("<image>") == len(item["images"]) == 1
        assert all(image.mode == "RGB" for image in item["images"])


def test_parquet_file_with_hf_image_structs(good) -> None:
    items = prepared(good, "file")
    assert [item["answer"] for item in items] == geometry3k_columns(len(SIZES))["answer"]
    assert_prompt_contract(items)
    first = items[0]
    assert first["prompt"].startswith("<image>Find x in figure train 0. You FIRST think")
    assert "\\boxed{}" in first["prompt"]
    assert first["choices"] is None and first["meta"] == {"row": 0}
    producer = manifest(good["file"][1])["producer"]
    assert producer["stage"] == "prepare" and producer["config"]["max_pixels"] == 20000


def test_images_are_resized_into_the_pixel_bounds(good) -> None:
    items = prepared(good, "file")
    for (w0, h0), item in zip(SIZES, items, strict=True):
        width, height = item["images"][0].size
        assert 10_000 <= width * height <= 20_000, (w0, h0, width, height)
        assert abs(width / height - w0 / h0) <= 0.05 * (w0 / h0), "aspect ratio changed"
    assert items[2]["images"][0].size == (120, 120), "an image inside the bounds was resized"


@pytest.mark.parametrize(("low", "high"), [(10_000, 20_000), (262_144, 4_194_304), (900, 1_000)])
def test_fit_pixels_lands_inside_the_bounds(low: int, high: int) -> None:
    from PIL import Image

    from stages.images import fit_pixels

    for width, height in [(1, 1), (3, 7), (64, 48), (10, 400), (333, 77), (2000, 1500), (5, 5000)]:
        fitted = fit_pixels(Image.new("RGB", (width, height)), low, high)
        assert low <= fitted.width * fitted.height <= high, (width, height, fitted.size)
        assert fitted.mode == "RGB"


def test_prepared_shards_load_with_huggingface_datasets(good, tmp_path: Path) -> None:
    import datasets
    from PIL import Image

    out = good["file"][1]
    loaded = datasets.load_dataset(
        "parquet",
        data_files=sorted(str(p) for p in out.glob("part-*.parquet")),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert loaded.num_rows == manifest(out)["rows"] == len(SIZES)
    assert loaded["answer"] == geometry3k_columns(len(SIZES))["answer"]
    assert all(isinstance(row["images"][0], Image.Image) for row in loaded)


def test_hub_snapshot_directory_picks_the_split(good, sources: Path) -> None:
    items = prepared(good, "hub_validation")
    assert [item["answer"] for item in items] == geometry3k_columns(3, "validation")["answer"]
    assert items[0]["id"] == "geometry3k-validation-000000"
    assert_prompt_contract(items)
    for item in items:  # default bounds for geometry3k: small diagrams are upscaled
        width, height = item["images"][0].size
        assert DEFAULT_MIN <= width * height <= DEFAULT_MAX
    out = sources / "out" / "train_limit"
    assert_ok(
        run_main(
            "prepare", "geometry3k", "--source", "hub", "--limit", "4", "--out", out, cwd=sources
        )
    )
    assert [item["answer"] for item in rows(out)] == geometry3k_columns(4, "train")["answer"]


def test_json_sources_with_image_paths(good, sources: Path) -> None:
    items = prepared(good, "jsonl")
    assert [item["answer"] for item in items] == ["100", "101", "102", "103"]
    assert_prompt_contract(items)
    # the image is the file the row names (colour (10, 20*i, 90)), only upscaled
    for i, item in enumerate(items):
        image = item["images"][0]
        assert DEFAULT_MIN <= image.width * image.height <= DEFAULT_MAX
        r, g, b = image.getpixel((image.width // 2, image.height // 2))
        assert (r, b) == (10, 90) and abs(g - 20 * i) <= 2
    out = sources / "out" / "json_array"
    assert_ok(
        run_main(
            "prepare",
            "geometry3k",
            "--source",
            "json",
            "--split",
            "validation",
            "--out",
            out,
            cwd=sources,
        )
    )
    assert [item["answer"] for item in rows(out)] == ["a0", "a1"]


def test_intergps_letters_become_choice_text(good) -> None:
    items = prepared(good, "intergps")
    assert len(items) == 5
    assert_prompt_contract(items)
    for i, item in enumerate(items):
        choices = [f"{i}.0", f"{i + 1}.5", f"{i + 2}", f"{i * 3}"]
        assert item["choices"] == choices
        assert item["answer"] == choices[i % 4]
        assert item["meta"]["answer_letter"] == "ABCD"[i % 4]
        assert item["images"][0].getpixel((0, 0)) == (i * 50 % 256, 0, 0)


def test_template_override_from_a_jinja_file(good) -> None:
    for i, item in enumerate(prepared(good, "intergps")):
        listed = "".join(f" ({k + 1}) {c}" for k, c in enumerate(item["choices"]))
        assert item["prompt"] == f"Q: <image>test problem {i}: find the angle.{listed}"


# ----------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    root = tmp_path_factory.mktemp("shapes")
    calls = {
        "a": ["--seed", "3"],
        "a_again": ["--seed", "3"],  # another process: the same bytes
        "other_seed": ["--seed", "4"],
        "validation": ["--seed", "3", "--split", "validation"],
        "hard": ["--seed", "3", "--difficulty", "hard", "--size", "60"],
    }
    outs = {name: root / name for name in calls}

    def args(name: str) -> list:
        return ["prepare", "shapes", "--size", "24", *calls[name], "--out", outs[name]]

    pair = run_many([(args("a"), root), (args("a_again"), root)])
    results = dict(zip(["a", "a_again"], pair, strict=True))
    results.update({name: run_main(*args(name)) for name in calls if name not in results})
    for result in results.values():
        assert_ok(result)
    return {name: (results[name], outs[name]) for name in calls}


def content(out: Path) -> list[tuple[str, str, bytes]]:
    table = open_shards(out).read_table(["prompt", "answer", "images"]).to_pylist()
    return [(r["prompt"], r["answer"], r["images"][0]["bytes"]) for r in table]


def test_shapes_is_deterministic_per_seed_and_split(shapes) -> None:
    a, again = manifest(shapes["a"][1]), manifest(shapes["a_again"][1])
    assert a["rows"] == 24
    assert a["content_sha256"] == again["content_sha256"]
    assert a["content_sha256"] != manifest(shapes["other_seed"][1])["content_sha256"]
    train, validation = content(shapes["a"][1]), content(shapes["validation"][1])
    assert len(validation) == 24
    shared = {item[2] for item in train} & {item[2] for item in validation}
    assert len(shared) < 4, "the validation split repeats the training drawings"


def test_shapes_rows(shapes) -> None:
    items = rows(shapes["a"][1])
    assert all(
        item["source"] == "shapes" and item["images"][0].size == (112, 112) for item in items
    )
    assert all(item["prompt"].endswith("Answer with one word or number.") for item in items)
    for item in items:
        if item["choices"]:
            assert item["answer"] in item["choices"]
            assert "Choose from: " + ", ".join(item["choices"]) in item["prompt"]
    hard = rows(shapes["hard"][1])
    tasks = {item["meta"]["task"] for item in hard}
    assert tasks <= {"colour", "kind", "count", "area"} and {"count", "area"} & tasks
    for item in hard:
        if item["meta"]["task"] in ("count", "area"):
            assert item["answer"].isdigit() and item["choices"] is None


# ----------------------------------------------------------------------------- bad inputs


def _parquet(d: Path, **changes) -> Path:
    columns = geometry3k_columns(3)
    for key, value in changes.items():
        if value is None:
            del columns[key]
        else:
            columns[key] = value
    return write_geometry3k_parquet(d / "train.parquet", columns)


def _intergps(d: Path, change=None, splits=("train", "validation", "test")) -> Path:
    root = make_intergps(d / "igps", 3, splits)
    if change is not None:
        change(root / "train" / "1")
    return root


def _edit_json(**fields):
    def change(folder: Path) -> None:
        data = json.loads((folder / "data.json").read_text())
        for key, value in fields.items():
            if value is None:
                del data[key]
            else:
                data[key] = value
        (folder / "data.json").write_text(json.dumps(data))

    return change


def _truncate(folder: Path) -> None:
    data = (folder / "img_diagram.png").read_bytes()
    (folder / "img_diagram.png").write_bytes(data[: len(data) // 2])


def _empty_png(folder: Path) -> None:
    (folder / "img_diagram.png").write_bytes(b"")


def _write_template(d: Path, text: str) -> Path:
    (d / "t.jinja").write_text(text)
    return d / "t.jinja"


def _jsonl(d: Path, image: str) -> Path:
    (d / "train.jsonl").write_text(
        json.dumps({"images": [image], "problem": "<image>x", "answer": "1"}) + "\n"
    )
    return d / "train.jsonl"


def _zero_byte_file(d: Path) -> Path:
    (d / "empty.png").write_bytes(b"")
    return _jsonl(d, "empty.png")


# name -> builder(d) returning the arguments after ``mgpo prepare``, and what the error names
BAD_INPUTS = {
    "unknown_dataset": (
        lambda d: ["geometri3k"],
        ["unknown dataset 'geometri3k'", "did you mean 'geometry3k'"],
    ),
    "missing_source": (
        lambda d: ["geometry3k", "--source", d / "nowhere"],
        ["nowhere", "no such file or directory"],
    ),
    "not_a_data_file": (
        lambda d: ["geometry3k", "--source", _touch(d / "notes.txt")],
        ["notes.txt", "expected .parquet, .json or .jsonl"],
    ),
    "broken_jsonl": (
        lambda d: ["geometry3k", "--source", _text(d / "train.jsonl", "{not json\n")],
        ["train.jsonl line 1", "not valid JSON"],
    ),
    "missing_column": (
        lambda d: ["geometry3k", "--source", _parquet(d, answer=None)],
        ["train.parquet", "missing column 'answer'"],
    ),
    "unreadable_image": (
        lambda d: [
            "geometry3k",
            "--source",
            _parquet(
                d,
                images=[
                    [{"bytes": png_bytes(), "path": None}],
                    [{"bytes": b"junk", "path": None}],
                    [],
                ],
            ),
        ],
        ["train.parquet row 1 image 0", "unreadable image"],
    ),
    "empty_image_bytes": (
        lambda d: [
            "geometry3k",
            "--source",
            _parquet(d, images=[[{"bytes": b"", "path": None}]] * 3),
        ],
        ["train.parquet row 0 image 0", "empty image"],
    ),
    "zero_byte_image_file": (
        lambda d: ["geometry3k", "--source", _intergps(d, _empty_png)],
        ["train/1/img_diagram.png", "is empty"],
    ),
    "zero_byte_image_path_in_jsonl": (
        lambda d: ["geometry3k", "--source", _zero_byte_file(d)],
        ["empty.png", "is empty"],
    ),
    "missing_image_file": (
        lambda d: ["geometry3k", "--source", _jsonl(d, "gone.png")],
        ["gone.png", "not found"],
    ),
    "truncated_image": (
        lambda d: ["geometry3k", "--source", _intergps(d, _truncate)],
        ["train/1/data.json image 0", "unreadable image"],
    ),
    "null_problem": (
        lambda d: ["geometry3k", "--source", _parquet(d, problem=["<image>a", None, "<image>c"])],
        ["train.parquet row 1", "empty or missing problem text"],
    ),
    "null_answer": (
        lambda d: ["geometry3k", "--source", _parquet(d, answer=["1", "2", None])],
        ["train.parquet row 2", "empty or missing answer"],
    ),
    "too_few_placeholders": (
        lambda d: ["geometry3k", "--source", _parquet(d, problem=["<image>a", "b", "<image>c"])],
        ["row 1", "0 <image> placeholder(s) but 1 image(s)"],
    ),
    "too_many_placeholders": (
        lambda d: [
            "geometry3k",
            "--source",
            _intergps(d, _edit_json(problem_text="<image> and <image>")),
        ],
        ["train/1/data.json", "3 <image> placeholder(s) but 1 image(s)"],
    ),
    "empty_parquet": (
        lambda d: [
            "geometry3k",
            "--source",
            write_geometry3k_parquet(d / "train.parquet", geometry3k_columns(0)),
        ],
        ["split 'train' is empty"],
    ),
    "empty_jsonl": (
        lambda d: ["geometry3k", "--source", _text(d / "train.jsonl", "")],
        ["train.jsonl", "split 'train' is empty"],
    ),
    "empty_intergps_split": (
        lambda d: ["geometry3k", "--source", _emptied_split(d), "--split", "test"],
        ["split 'test' is empty"],
    ),
    "split_without_files": (
        lambda d: [
            "geometry3k",
            "--source",
            make_geometry3k_parquet(d / "hub", 2, "train").parent,
            "--split",
            "test",
        ],
        ["no files for split 'test'", "found splits: train"],
    ),
    "intergps_without_split": (
        lambda d: [
            "geometry3k",
            "--source",
            _intergps(d, splits=("train",)),
            "--split",
            "validation",
        ],
        ["without a 'val' folder"],
    ),
    "answer_letter_out_of_range": (
        lambda d: ["geometry3k", "--source", _intergps(d, _edit_json(answer="E"))],
        ["train/1/data.json", "answer 'E' is not a letter among 4 choices"],
    ),
    "intergps_bad_json": (
        lambda d: ["geometry3k", "--source", _intergps(d, _bad_json)],
        ["train/1/data.json", "not valid JSON"],
    ),
    "intergps_missing_key": (
        lambda d: ["geometry3k", "--source", _intergps(d, _edit_json(problem_text=None))],
        ["train/1/data.json", "missing key 'problem_text'"],
    ),
    "unknown_split": (
        lambda d: ["shapes", "--split", "dev"],
        ["--split dev", "train, validation, test"],
    ),
    "unknown_template": (
        lambda d: ["shapes", "--template", "fancy"],
        ["'fancy'", "neither a file nor a built-in template"],
    ),
    "template_unknown_variable": (
        lambda d: ["shapes", "--template", _write_template(d, "{{ question }}")],
        ["unknown variable", "'question'"],
    ),
    "template_syntax_error": (
        lambda d: ["shapes", "--template", _write_template(d, "{{ problem ")],
        ["t.jinja", "line 1"],
    ),
    "min_over_max_pixels": (
        lambda d: ["shapes", "--min-pixels", "100", "--max-pixels", "10"],
        ["--min-pixels 100 is larger than --max-pixels 10"],
    ),
    "unknown_difficulty": (
        lambda d: ["shapes", "--difficulty", "extreme"],
        ["--difficulty extreme", "easy, medium, hard"],
    ),
    "nonpositive_size": (lambda d: ["shapes", "--size", "0"], ["--size must be positive"]),
    "missing_name": (lambda d: [], ["missing dataset NAME"]),
}


def _touch(path: Path) -> Path:
    path.write_text("hello")
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bad_json(folder: Path) -> None:
    (folder / "data.json").write_text("{oops")


def _emptied_split(d: Path) -> Path:
    root = _intergps(d, splits=("train",))
    (root / "test").mkdir()
    return root


# The list runs as real subprocesses; the other cases go through the same entry point
# in-process (``run_main``), which only saves the interpreter start.
CLI_CASES = (
    "unknown_dataset",
    "missing_source",
    "missing_column",
    "unreadable_image",
    "zero_byte_image_file",
    "too_many_placeholders",
    "empty_intergps_split",
)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    root = tmp_path_factory.mktemp("bad")
    calls = []
    for name in CLI_CASES:
        d = root / name
        d.mkdir()
        calls.append((["prepare", *BAD_INPUTS[name][0](d), "--out", d / "out"], d))
    # the default output directory (data/NAME/SPLIT under the working directory)
    d = root / "default_out"
    d.mkdir()
    calls.append((["prepare", "geometry3k", "--source", _intergps(d, _edit_json(answer="E"))], d))
    results = run_many(calls)
    names = [*CLI_CASES, "default_out"]
    return {
        name: (result, root / name / ("data" if name == "default_out" else "out"))
        for name, result in zip(names, results, strict=True)
    }


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_nothing(bad, tmp_path: Path, name: str) -> None:
    if name in bad:
        result, out = bad[name]
    else:
        out = tmp_path / "out"
        result = run_main("prepare", *BAD_INPUTS[name][0](tmp_path), "--out", out, cwd=tmp_path)
    assert_user_error(result, *BAD_INPUTS[name][1])
    assert_nothing_left(out)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_bad_input_with_default_output_leaves_no_directories(bad) -> None:
    result, data = bad["default_out"]
    assert_user_error(result, "train/1/data.json", "answer 'E'")
    assert not data.exists(), f"left behind: {sorted(str(p) for p in data.rglob('*'))}"


def test_limit_stops_before_the_next_problem(tmp_path: Path) -> None:
    root = make_intergps(tmp_path / "igps", 4, splits=("train",))
    (root / "train" / "2" / "data.json").write_text("{broken")  # never read with --limit 2
    out = tmp_path / "out"
    assert_ok(run_main("prepare", "geometry3k", "--source", root, "--limit", "2", "--out", out))
    assert [item["meta"]["intergps_id"] for item in rows(out)] == [0, 1]


def test_unreachable_hub_points_at_source(tmp_path: Path) -> None:
    # No network here: offline mode with an empty hub cache is what an unreachable hub looks like.
    result = run_cli(
        "prepare",
        "geometry3k",
        "--out",
        tmp_path / "out",
        cwd=tmp_path,
        env={"HF_HUB_CACHE": str(tmp_path / "hub-cache")},
    )
    assert_user_error(result, "could not load hiyouga/geometry3k", "pass --source PATH")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hub-cache") == []


# ----------------------------------------------------------------------------- existing output


def test_complete_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "set"
    assert_ok(run_cli("prepare", "shapes", "--size", "8", "--out", out))
    first = manifest(out)

    refused = run_cli("prepare", "shapes", "--size", "8", "--seed", "1", "--out", out)
    assert_user_error(refused, str(out), "already holds a complete shard set", "--overwrite")
    assert manifest(out) == first and not staging_dir(out).exists()

    same = run_main("prepare", "shapes", "--size", "8", "--out", out)
    assert_ok(same)
    assert "nothing to do" in same.stderr and manifest(out) == first

    # a failing run with --overwrite keeps the old set whole
    failing = run_main(
        "prepare", "shapes", "--size", "8", "--template", "nope", "--overwrite", "--out", out
    )
    assert_user_error(failing, "nope")
    assert manifest(out) == first and not staging_dir(out).exists()

    replaced = run_main(
        "prepare", "shapes", "--size", "8", "--seed", "1", "--overwrite", "--out", out
    )
    assert_ok(replaced)
    second = manifest(out)
    assert second["content_sha256"] != first["content_sha256"]
    assert second["producer"]["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_damaged_output_is_refused_not_crashed(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / MANIFEST).write_text("{truncated")
    result = run_main("prepare", "shapes", "--size", "4", "--out", out)
    assert_user_error(result, "already holds a complete shard set", "--overwrite")
    assert_ok(run_main("prepare", "shapes", "--size", "4", "--out", out, "--overwrite"))
    assert open_shards(out).num_rows == 4


def test_non_shard_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = run_main("prepare", "shapes", "--size", "4", "--out", out)
    assert_user_error(result, "not a shard set")
    forced = run_main("prepare", "shapes", "--size", "4", "--out", out, "--overwrite")
    assert_user_error(forced, "not a shard set", "even with --overwrite")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


@pytest.mark.slow
def test_killed_prepare_leaves_no_manifest(tmp_path: Path) -> None:
    out = tmp_path / "big"
    staged = staging_dir(out)
    process = subprocess.Popen(
        cli_command("prepare", "shapes", "--size", "1000000", "--out", out),
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (staged / "part-00000.parquet").exists():
            assert process.poll() is None, "prepare ended before writing a part"
            assert time.monotonic() < deadline, "no part written in time"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / MANIFEST).exists() and not (staged / MANIFEST).exists()
    with pytest.raises(MgpoError):
        open_shards(out)
    summary = run_cli("shards", out)
    assert_user_error(summary, str(out))
    # a later run starts over and finishes
    assert_ok(run_cli("prepare", "shapes", "--size", "5", "--out", out))
    assert open_shards(out).num_rows == 5 and not staged.exists()


# ----------------------------------------------------------------------------- shards, help


def test_shards_summary(shapes) -> None:
    _, out = shapes["a"]
    result = run_cli("shards", out, "--rows", "2", "--verify")
    assert_ok(result)
    text = result.stdout
    assert "kind=prompts" in text and "rows=24" in text and "parts=1" in text
    assert manifest(out)["content_sha256"] in text and "(verified)" in text
    for column in ("id", "prompt", "images", "answer", "choices", "source", "meta"):
        assert column in text
    assert "first 2 rows" in text and "shapes-train-000000" in text and "[1 image(s)]" in text


def test_shards_errors(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    missing, half = run_main("shards", tmp_path / "absent"), run_main("shards", tmp_path / "half")
    assert_user_error(missing, "no such shard directory")
    assert_user_error(half, "no manifest.json")


def test_help_and_version() -> None:
    top, version, prepare, shards, listing = run_many(
        [
            (["--help"], None),
            (["--version"], None),
            (["prepare", "--help"], None),
            (["shards", "--help"], None),
            (["prepare", "--list"], None),
        ]
    )
    for result in (top, version, prepare, shards, listing):
        assert_ok(result)
    assert "prepare" in top.stdout and "shards" in top.stdout and "--version" in top.stdout
    assert version.stdout.strip() == f"mgpo {__version__}"
    for option in ("--source", "--split", "--out", "--template", "--min-pixels", "--overwrite"):
        assert option in prepare.stdout
    assert "--list" in prepare.stdout and "Inter-GPS" in prepare.stdout
    assert "--verify" in shards.stdout and "--rows" in shards.stdout
    assert "geometry3k" in listing.stdout and "shapes" in listing.stdout
    assert "hiyouga/geometry3k" in listing.stdout
