"""Damaged input, odd numbers and unwritable places, over every command, as a user meets them.

Each case starts from a copy of real, good outputs of every stage (prompt, rollout and score
shards, a training run written by ``mgpo train``, its evaluation, a local Geometry3K copy) in a
workspace folder, damages one thing, runs the command there, and asserts what a user is
promised: exit code 2, no traceback, exactly one ``error:`` line naming the file, row, column or
option, and the workspace byte-for-byte as it was (so nothing partial was left behind and no good
output was touched). Most cases run the console entry point in-process (``run_main``: the same
code path as the ``mgpo`` script, without an interpreter start per case); the ``SUBPROCESS`` ones
run the real CLI in a fresh interpreter.

Then kill -9 tests: ``train`` before its first checkpoint (``--resume`` starts again cleanly:
no duplicate ``metrics.jsonl`` rows, the same result as a run never killed), and a 2-part score
stage (the rerun writes the very same parts). And ``mgpo eval --model RUN`` / ``mgpo report RUN``
on real run directories: finished, resumed, and killed before any checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from test_train import _metrics  # metrics rows without their timings

from helpers import (
    assert_user_error,
    cli_env,
    make_geometry3k_jsonl,
    png_bytes,
    run_cli,
    run_main,
)
from stages.shards import open_shards, write_shards

PART = "part-00000.parquet"
OVERLONG = ["--set", "rollout.max_prompt_tokens=20"]
TRAIN = ["--recipe", "tiny", "--set", "data.val=null", "--set", "rollout.batch_prompts=4"]
TRAIN += ["--set", "rollout.n=2", "--set", "rollout.max_new_tokens=1"]


# ----------------------------------------------------------------------------- good outputs


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_model_dir) -> Path:
    """One real output of every stage, made by the CLI; cases copy it and damage the copy."""
    root = tmp_path_factory.mktemp("good")
    _ok(run_main("prepare", "shapes", "--difficulty", "colour", "--size", "8", "--out", "prompts", cwd=root))  # fmt: skip
    _ok(run_main("rollout", "--prompts", "prompts", "--model", "tiny", "-n", "2", "--max-new-tokens", "1", "--out", "rollouts", cwd=root))  # fmt: skip
    _ok(run_main("score", "--rollouts", "rollouts", "--prompts", "prompts", "--reward", "short_answer", "--out", "scores", cwd=root))  # fmt: skip
    _ok(run_main("train", *TRAIN, "--data", "prompts", "--steps", "1", "--run-dir", "run", cwd=root))  # fmt: skip
    _ok(run_main("eval", "shapes", "--model", "run", "--limit", "2", "--max-new-tokens", "1", "--workers", "1", "--out", "evals", cwd=root))  # fmt: skip
    make_geometry3k_jsonl(root / "g3k", 4)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (hash) and folder under ``folder``, hidden ones included."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def unwritable(ws: Path) -> Path:
    """A folder this process cannot write in: read-only bits, or for root (who ignores them)
    a place in /sys, which refuses new files."""
    if os.geteuid() != 0:
        folder = ws / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/mgpo-test")
    try:
        folder.mkdir()
    except OSError:
        return folder
    folder.rmdir()
    pytest.skip("no unwritable folder on this machine")


# ------------------------------------------------------------------------------ damaging


def after(_done: object, *args: object) -> list:
    """The command line ``args``, once the damage (evaluated first, as the argument) is done."""
    return list(args)


def flip_byte(part: Path, column: str) -> None:
    """Flip the last byte of ``column``'s data in the first row group: page data, which the
    page's CRC covers (a byte in a page header's statistics would go unnoticed, harmlessly)."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(part).metadata.row_group(0)
    columns = (group.column(i) for i in range(group.num_columns))
    chunk = next(c for c in columns if c.path_in_schema.split(".")[0] == column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(part.read_bytes())
    data[start + chunk.total_compressed_size - 1] ^= 0xFF
    part.write_bytes(bytes(data))


def set_rows(shards: Path, part_rows: int) -> None:
    """A manifest whose row counts disagree with its (single) part."""
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["parts"][0]["rows"] = manifest["rows"] = part_rows
    (shards / "manifest.json").write_text(json.dumps(manifest))


def truncate(part: Path) -> None:
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def png_header(width: int, height: int) -> bytes:
    """The start of a PNG declaring ``width`` x ``height`` pixels, and no pixel data."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def big_png(path: Path) -> Path:
    """A real, valid 20000 x 20000 PNG (1-bit, 50 kB on disk, 400 M pixels decoded)."""
    Image.new("1", (20000, 20000)).save(path)
    return path


def bad_image_prompts(ws: Path, value: dict) -> Path:
    """The good prompts rewritten with row 2's image replaced by ``value``."""
    rows = list(open_shards(ws / "prompts", "prompts").iter_rows())
    rows[2]["images"] = [value]
    out = ws / "bad-prompts"
    write_shards(out, "prompts", rows, producer={"command": "test"})
    return out


def bad_meta_prompts(ws: Path) -> Path:
    rows = list(open_shards(ws / "prompts", "prompts").iter_rows())
    rows[1]["meta"] = "{not json"
    out = ws / "bad-prompts"
    write_shards(out, "prompts", rows, producer={"command": "test"})
    return out


def jsonl_with(ws: Path, line: int, text: bytes) -> Path:
    """The good Geometry3K jsonl copy with line ``line`` (1-based) replaced by ``text``."""
    path = ws / "g3k" / "train.jsonl"
    lines = path.read_bytes().splitlines()
    lines[line - 1] = text
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ws / "g3k"


def jsonl_image(ws: Path, data: bytes | None = None, big: bool = False) -> Path:
    """Row 1's image file replaced: ``data`` as its bytes, or a real 20000 x 20000 PNG."""
    image = ws / "g3k" / "img" / "train-1.png"
    if big:
        big_png(image)
    else:
        image.write_bytes(data or b"")
    return ws / "g3k"


def killed_stage(ws: Path, name: str) -> Path:
    """What a stage killed mid-way leaves: only the hidden staging folder beside the target."""
    shutil.copytree(ws / "prompts", ws / f".{name}.partial")
    (ws / f".{name}.partial" / "manifest.json").unlink()
    return ws / name


def run_without_policy(ws: Path) -> Path:
    """A run directory as a kill before the first checkpoint leaves it."""
    run = ws / "young-run"
    shutil.copytree(ws / "run", run, ignore=shutil.ignore_patterns("final", "checkpoints"))
    return run


def damaged_config(ws: Path) -> Path:
    (ws / "run" / "config.json").write_text('{"model": {"name": "tiny"')  # cut off mid-write
    return ws / "run"


def truncated_gguf(ws: Path) -> Path:
    path = ws / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\x05")  # magic, version, then nothing
    return path


def broken_model(ws: Path) -> Path:
    """The run's final policy with its weights file cut in half (its config still loads)."""
    weights = ws / "run" / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ws / "run"


# --------------------------------------------------------------------------------- the cases

ROLL = ["--model", "tiny", "-n", "1", "--max-new-tokens", "1", "--out", "new"]
ROLLOUT = ["rollout", "--prompts", "prompts", *ROLL]
SCORE = ["score", "--rollouts", "rollouts", "--prompts", "prompts"]
NEW_RUN = ["train", *TRAIN, "--run-dir", "new-run", "--steps", "1", "--set", "data.shuffle=false"]
EVAL = ["--limit", "2", "--max-new-tokens", "1", "--workers", "1"]
EVAL_RUN = ["eval", "shapes", "--model", "run", *EVAL]
G3K = ["prepare", "geometry3k", "--source"]


@dataclass(frozen=True)
class Case:
    args: Callable[[Path], list]  # the command line, built (and its damage done) in the workspace
    fragments: tuple[str, ...]  # what the error line must name
    subprocess: bool = False  # through a real interpreter rather than in-process


def image_rollout(value: bytes) -> Callable[[Path], list]:
    """rollout over the good prompts with row 2's image bytes replaced by ``value``."""
    return lambda ws: ["rollout", "--prompts", bad_image_prompts(ws, image(value)), *ROLL]


def image(data: bytes) -> dict:
    return {"bytes": data, "path": None}


CASES: dict[str, Case] = {
    # -- prepare
    "prepare_jsonl_not_utf8": Case(
        lambda ws: [*G3K, jsonl_with(ws, 2, b'{"problem": "\xff"}')],
        ("train.jsonl line 2", "not UTF-8"),
    ),
    "prepare_jsonl_broken_line": Case(
        lambda ws: [*G3K, jsonl_with(ws, 3, b'{"problem": ')],
        ("train.jsonl line 3", "not valid JSON"),
    ),
    "prepare_image_20000x20000": Case(
        lambda ws: [*G3K, jsonl_image(ws, big=True)], ("g3k row 1 image 0", "too many pixels")
    ),
    "prepare_image_not_an_image": Case(
        lambda ws: [*G3K, jsonl_image(ws, b"GIF89a, no")], ("row 1 image 0", "unreadable image")
    ),
    "prepare_image_zero_bytes": Case(
        lambda ws: [*G3K, jsonl_image(ws, b"")], ("row 1 image 0", "is empty")
    ),
    "prepare_out_unwritable": Case(
        lambda ws: ["prepare", "shapes", "--size", "4", "--out", unwritable(ws) / "p"],
        ("--out", "cannot write"),
    ),
    "prepare_out_under_a_file": Case(
        lambda ws: ["prepare", "shapes", "--size", "4", "--out", "g3k/train.jsonl/p"],
        ("--out", "is a file, not a folder"),
    ),
    "prepare_zero_limit": Case(
        lambda ws: ["prepare", "shapes", "--limit", "0"], ("--limit must be positive",)
    ),
    "prepare_pixels_not_a_number": Case(
        lambda ws: ["prepare", "geometry3k", "--max-pixels", "lots"],
        ("Invalid value for '--max-pixels'", "--help"),
    ),
    "prepare_unknown_option": Case(
        lambda ws: ["prepare", "shapes", "--sise", "4"], ("No such option: --sise",), True
    ),
    # -- shards
    "shards_flipped_byte": Case(
        lambda ws: after(flip_byte(ws / "prompts" / PART, "prompt"), "shards", "prompts"),
        (f"prompts/{PART}", "damaged data in column 'prompt', rows 0-7"),
    ),
    "shards_manifest_rows_wrong": Case(
        lambda ws: after(set_rows(ws / "prompts", 5), "shards", "prompts"),
        (f"{PART}: holds 8 rows but manifest.json says 5",),
    ),
    "shards_truncated_part": Case(
        lambda ws: after(truncate(ws / "scores" / PART), "shards", "scores"),
        (f"scores/{PART}", "not a readable Parquet file"),
    ),
    "shards_manifest_not_json": Case(
        lambda ws: after((ws / "scores" / "manifest.json").write_text("{"), "shards", "scores"),
        ("scores/manifest.json", "unreadable manifest"),
    ),
    "shards_killed_stage": Case(
        lambda ws: ["shards", killed_stage(ws, "later")],
        ("no such shard directory", "unfinished run is staged"),
    ),
    # -- rollout
    "rollout_flipped_byte": Case(
        lambda ws: after(flip_byte(ws / "prompts" / PART, "images"), *ROLLOUT),
        (f"prompts/{PART}", "damaged data in column 'images'"),
    ),
    "rollout_manifest_rows_wrong": Case(
        lambda ws: after(set_rows(ws / "prompts", 5), *ROLLOUT),
        ("holds 8 rows but manifest.json says 5",),
    ),
    "rollout_image_not_an_image": Case(
        image_rollout(b"hello"), (f"{PART} row 2", "column 'images'[0]", "not an image")
    ),
    "rollout_image_zero_bytes": Case(
        image_rollout(b""), (f"{PART} row 2", "column 'images'[0]", "empty image")
    ),
    "rollout_image_header_20000x20000": Case(
        image_rollout(png_header(20000, 20000)),
        (f"{PART} row 2", "column 'images'[0]", "unreadable image"),
    ),
    "rollout_meta_not_json": Case(
        lambda ws: ["rollout", "--prompts", bad_meta_prompts(ws), *ROLL],
        (f"{PART} row 1", "column 'meta' is not JSON"),
    ),
    "rollout_temperature_nan": Case(
        lambda ws: [*ROLLOUT, "--temperature", "nan"], ("--temperature must be a finite number",)
    ),
    "rollout_top_p_inf": Case(
        lambda ws: [*ROLLOUT, "--top-p", "inf"], ("--top-p must be a finite number",)
    ),
    "rollout_out_unwritable": Case(
        lambda ws: [*ROLLOUT, "--out", unwritable(ws) / "r"], ("--out", "cannot write")
    ),
    "rollout_overlong_prompt": Case(
        lambda ws: [*ROLLOUT, "--max-prompt-tokens", "20"],
        (f"{PART} row 0", "tokens (images included)", "--max-prompt-tokens 20"),
    ),
    "rollout_after_a_killed_prepare": Case(
        lambda ws: ["rollout", "--prompts", killed_stage(ws, "fresh"), *ROLL],
        ("no such shard directory", "unfinished run is staged"),
    ),
    "rollout_bad_count": Case(
        lambda ws: [*ROLLOUT, "-n", "many"], ("Invalid value for '-n'",), True
    ),
    # -- score
    "score_timeout_inf": Case(
        lambda ws: [*SCORE, "--timeout", "inf"], ("--timeout must be a finite number",)
    ),
    "score_timeout_nan": Case(
        lambda ws: [*SCORE, "--timeout", "nan"], ("--timeout must be a finite number",)
    ),
    "score_format_weight_out_of_range": Case(
        lambda ws: [*SCORE, "--format-weight", "2"], ("--format-weight must be in [0, 1]",)
    ),
    "score_out_unwritable": Case(
        lambda ws: [*SCORE, "--out", unwritable(ws) / "s"], ("--out", "cannot write")
    ),
    "score_flipped_byte": Case(
        lambda ws: after(flip_byte(ws / "rollouts" / PART, "response"), *SCORE, "--out", "s"),
        (f"rollouts/{PART}", "damaged data in column 'response'"),
    ),
    "score_missing_reward_file": Case(
        lambda ws: [*SCORE, "--reward", "nope.py:fn", "--out", "s"],
        ("--reward 'nope.py:fn'", "does not exist"),
    ),
    # -- train (a new run must leave no run folder behind)
    "train_lr_nan": Case(
        lambda ws: [*NEW_RUN, "--data", "prompts", "--set", "optim.lr=nan"],
        ("optim.lr must be a finite number",),
    ),
    "train_lr_inf": Case(
        lambda ws: [*NEW_RUN, "--data", "prompts", "--set", "optim.lr=.inf"],
        ("optim.lr must be a finite number",),
    ),
    "train_temperature_nan": Case(
        lambda ws: [*NEW_RUN, "--data", "prompts", "--set", "rollout.temperature=nan"],
        ("rollout.temperature must be a finite number",),
    ),
    "train_zero_timeout": Case(
        lambda ws: [*NEW_RUN, "--data", "prompts", "--set", "score.timeout_s=0"],
        ("score.timeout_s must be positive",),
        True,
    ),
    "train_missing_reward_file": Case(
        lambda ws: [*NEW_RUN, "--data", "prompts", "--set", "score.reward=nope.py:fn"],
        ("nope.py", "does not exist"),
    ),
    "train_resume_damaged_config": Case(
        lambda ws: [
            "train",
            *TRAIN,
            "--data",
            "prompts",
            "--run-dir",
            damaged_config(ws),
            "--resume",
        ],
        ("run/config.json: damaged", "--overwrite"),
    ),
    "train_run_dir_unwritable": Case(
        lambda ws: ["train", *TRAIN, "--data", "prompts", "--run-dir", unwritable(ws) / "run"],
        ("--run-dir", "cannot write"),
    ),
    "train_overlong_prompts_refused": Case(
        lambda ws: [
            *NEW_RUN,
            "--data",
            "prompts",
            *OVERLONG,
            "--set",
            "data.filter_overlong=false",
        ],
        (f"prompts/{PART} row 0", "more than rollout.max_prompt_tokens 20"),
    ),
    "train_unreadable_image": Case(  # found when prompts are counted, before the run folder
        lambda ws: [*NEW_RUN, "--data", bad_image_prompts(ws, image(b"x"))],
        (f"bad-prompts/{PART} row 2", "column 'images'[0]", "unreadable image"),
    ),
    "train_truncated_image_in_step_1": Case(  # its header reads, its pixels do not: in step 1
        lambda ws: [*NEW_RUN, "--data", bad_image_prompts(ws, image(png_header(8, 8)))],
        (f"bad-prompts/{PART} row 2", "column 'images'[0]", "unreadable image"),
    ),
    # -- eval
    "eval_timeout_inf": Case(
        lambda ws: [*EVAL_RUN, "--timeout", "inf", "--out", "e"],
        ("--timeout must be a finite number",),
    ),
    "eval_temperature_nan": Case(
        lambda ws: [*EVAL_RUN, "--temperature", "nan"], ("--temperature must be a finite number",)
    ),
    "eval_out_is_a_file": Case(
        lambda ws: [*EVAL_RUN, "--out", "g3k/train.jsonl"],
        ("--out g3k/train.jsonl", "exists and is not a directory"),
    ),
    "eval_run_without_a_policy": Case(
        lambda ws: ["eval", "shapes", "--model", run_without_policy(ws), *EVAL],
        ("young-run", "no policy yet"),
    ),
    "eval_overwrite_with_a_broken_model": Case(  # the old results stay as they were
        lambda ws: after(broken_model(ws), *EVAL_RUN, "--out", "evals", "--overwrite"),
        ("cannot load model", "run/final"),
    ),
    # -- report
    "report_out_unwritable": Case(
        lambda ws: ["report", "run", "--out", unwritable(ws) / "rep"], ("--out", "cannot write")
    ),
    "report_out_is_a_file": Case(
        lambda ws: ["report", "run", "--out", "g3k/train.jsonl"],
        ("--out g3k/train.jsonl", "not a folder"),
    ),
    "report_zero_smoothing": Case(
        lambda ws: ["report", "run", "--smooth", "0"], ("--smooth must be positive",)
    ),
    # -- models
    "gguf_truncated": Case(
        lambda ws: ["models", "import-gguf", truncated_gguf(ws), "model-out"],
        ("model.gguf", "truncated or damaged"),
    ),
    "gguf_out_unwritable": Case(
        lambda ws: ["models", "import-gguf", truncated_gguf(ws), unwritable(ws) / "m"],
        ("OUT", "cannot write"),
    ),
    # -- the command line itself
    "unknown_command": Case(lambda ws: ["trian"], ("No such command 'trian'",), True),
}


def test_there_are_at_least_40_cases_over_every_command():
    commands = {name.split("_")[0] for name in CASES}
    assert len(CASES) >= 40
    assert {"prepare", "shards", "rollout", "score", "train", "eval", "report", "gguf"} <= commands


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_input_is_one_line_and_changes_nothing(good: Path, tmp_path: Path, name: str):
    case = CASES[name]
    ws = tmp_path / "ws"
    shutil.copytree(good, ws, symlinks=True)
    args = case.args(ws)  # the damage is done here
    before = snapshot(ws)
    run = run_cli if case.subprocess else run_main
    result = run(*args, cwd=ws)
    assert_user_error(result, *case.fragments)
    after = snapshot(ws)
    assert sorted(set(after) - set(before)) == [], "left behind"
    assert sorted(set(before) - set(after)) == [], "removed"
    assert [k for k in before if before[k] != after[k]] == [], "changed"


# ------------------------------------------------------------------------ real run directories


def test_eval_and_report_take_a_real_run_directory(good: Path, tmp_path: Path) -> None:
    """``mgpo eval --model RUN``: the run's config.json is a training recipe, not a model's."""
    assert json.loads((good / "run" / "config.json").read_text())["trainer"]
    summary = json.loads(
        (good / "evals" / "run-final" / "shapes" / "test" / "summary.json").read_text()
    )
    assert summary["model_spec"] == "run" and summary["settings"]["model"].endswith("run/final")
    _ok(run_main("report", good / "run", "--out", tmp_path / "report"))
    assert (tmp_path / "report" / "index.html").is_file()
    # --overwrite that succeeds: the new results are swapped in, no hidden folder is left.
    ws = tmp_path / "ws"
    shutil.copytree(good, ws)
    _ok(run_main(*EVAL_RUN, "--max-new-tokens", "2", "--out", "evals", "--overwrite", cwd=ws))
    folder = ws / "evals" / "run-final"
    assert sorted(p.name for p in folder.iterdir()) == ["shapes"]
    assert sorted(p.name for p in (folder / "shapes").iterdir()) == ["test"]
    summary = json.loads((folder / "shapes" / "test" / "summary.json").read_text())
    assert summary["settings"]["max_new_tokens"] == 2


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_then_resume(good: Path, tmp_path: Path) -> None:
    """kill -9 during step 2 of a run that checkpoints only at its end: ``--resume`` has no
    checkpoint, so it starts again from step 0, without duplicating any metrics row, and ends
    exactly as a run never killed; eval and report take the killed and the resumed run."""
    args = [*TRAIN, "--data", good / "prompts", "--steps", "3", "--set", "trainer.save_every=0"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _ok(run_cli("train", *args, "--run-dir", straight, cwd=tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "mgpo_cli", "train", *map(str, args), "--run-dir", str(killed)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(killed / "steps" / "step-000002" / "rollouts" / "manifest.json", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints").exists() or not any((killed / "checkpoints").iterdir())
    assert [row["step"] for row in _metrics(killed)] == [1]
    result = run_main("eval", "shapes", "--model", killed, *EVAL, "--out", tmp_path / "e")
    assert_user_error(result, "no policy yet")
    _ok(run_main("report", killed, "--out", tmp_path / "report-killed"))

    _ok(run_cli("train", *args, "--run-dir", killed, "--resume", cwd=tmp_path))
    assert [row["step"] for row in _metrics(killed)] == [1, 2, 3]
    assert _metrics(killed) == _metrics(straight)
    _ok(run_main("eval", "shapes", "--model", killed, *EVAL, "--out", tmp_path / "e"))
    assert (tmp_path / "e" / "killed-final" / "shapes" / "test" / "summary.json").is_file()
    _ok(run_main("report", killed, straight, "--out", tmp_path / "report"))


SLOW_REWARD = """
import time
from pathlib import Path

def reward(response, answer, *, prompt_id, sample, **kwargs):
    if (prompt_id, sample) == ("{marker_id}", 0):
        Path("{marker}").write_text("scoring")
    time.sleep(0.002)
    return {{"reward": float(response.strip() == answer), "length": float(len(response))}}
"""


@pytest.mark.slow
def test_kill_a_two_part_score_stage_then_rerun(good: Path, tmp_path: Path) -> None:
    """kill -9 halfway through scoring 1,040 rows (two parts of at most 1,024): nothing a later
    stage could read is left, and the rerun writes exactly the parts a run never killed does."""
    _ok(run_main("prepare", "shapes", "--size", "65", "--out", tmp_path / "p", cwd=tmp_path))
    roll = ["--model", "tiny", "-n", "16", "--max-new-tokens", "1", "--out", tmp_path / "r"]
    _ok(run_main("rollout", "--prompts", tmp_path / "p", *roll, cwd=tmp_path))
    marker = tmp_path / "halfway"
    spec = tmp_path / "slow_reward.py"
    spec.write_text(SLOW_REWARD.format(marker_id="shapes-train-000032", marker=marker))
    score = ["score", "--rollouts", tmp_path / "r", "--reward", f"{spec}:reward"]
    _ok(run_cli(*score, "--out", tmp_path / "straight", cwd=tmp_path))
    marker.unlink()
    straight = json.loads((tmp_path / "straight" / "manifest.json").read_text())
    assert [part["rows"] for part in straight["parts"]] == [1024, 16]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "mgpo_cli", *map(str, score), "--out", str(killed)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "manifest.json").exists()
    assert_user_error(run_main("shards", killed), "killed")
    _ok(run_cli(*score, "--out", killed, cwd=tmp_path))
    rerun = json.loads((killed / "manifest.json").read_text())
    assert rerun["parts"] == straight["parts"]
    assert rerun["content_sha256"] == straight["content_sha256"]
    assert not (tmp_path / ".killed.partial").exists()


def test_unwritable_helper_really_refuses(tmp_path: Path) -> None:
    """The cases above rely on this folder refusing a new file, even for root."""
    folder = unwritable(tmp_path)
    with pytest.raises(OSError):
        (folder / "x").write_bytes(b"")


def test_png_header_declares_a_bomb() -> None:
    with pytest.raises(Exception):  # noqa: B017 - PIL refuses it one way or another
        Image.open(io.BytesIO(png_header(20000, 20000))).load()
    assert png_bytes()  # the good images of the fixtures are real PNGs
