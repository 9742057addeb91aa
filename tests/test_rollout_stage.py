"""``mgpo rollout`` as a user runs it: the hf backend on the tiny model and the built-in ``shapes``
prompts. Shard schema, n samples per prompt, behaviour log-probs against the trainer's teacher-forced
forward, seeds, resuming after a SIGKILL, and bad input (one ``error:`` line, exit 2, no output).

Most runs go through the console entry point in this process (``run_main``: the same code path as
the installed ``mgpo`` script, without an interpreter start); the kill test needs a real process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import (
    assert_nothing_left,
    assert_user_error,
    cli_command,
    cli_env,
    kill_tree,
    launch_cli,
    launch_command,
    run_main,
)
from stages.schemas import ROLLOUTS
from stages.shards import open_shards, prompt_row, staging_dir, write_shards

pytestmark = pytest.mark.usefixtures("tiny_model_dir")

N_PROMPTS = 8  # prompts prepared
LIMIT = 5
N = 3
MAX_NEW = 6
BATCH = 2  # prompts per part: 5 prompts -> parts of 2, 2, 1


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def rollout_args(prompts: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "rollout",
        "--prompts",
        prompts,
        "--model",
        "tiny",
        "-n",
        str(N),
        "--max-new-tokens",
        str(MAX_NEW),
        "--limit",
        str(LIMIT),
        "--batch-prompts",
        str(BATCH),
        "--out",
        out,
        *extra,
    ]


def rows_of(path: Path) -> list[dict[str, Any]]:
    return list(open_shards(path, "rollouts").iter_rows())


def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    out = {(r["prompt_id"], r["sample"]): r for r in rows}
    assert len(out) == len(rows), "duplicate (prompt_id, sample) rows"
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rollout-stage")


@pytest.fixture(scope="module")
def prompts(root: Path) -> Path:
    out = root / "prompts"
    assert_ok(run_main("prepare", "shapes", "--size", str(N_PROMPTS), "--out", out))
    return out


@pytest.fixture(scope="module")
def sampled(root: Path, prompts: Path) -> dict[str, Path]:
    """Rollout sets made once for several tests: seed 0 twice, seed 1, and temperature 0.7."""
    runs = {
        "seed0": (),
        "seed0_again": (),
        "seed1": ("--seed", "1"),
        "t07": ("--temperature", "0.7", "--seed", "5"),
    }
    paths = {}
    for name, extra in runs.items():
        paths[name] = root / f"rollouts-{name}"
        assert_ok(run_main(*rollout_args(prompts, paths[name], *extra)))
    return paths


# --------------------------------------------------------------------------------- good runs


def test_schema_and_n_samples_per_prompt(sampled, prompts, tiny_policy) -> None:
    _, io = tiny_policy
    shard_set = open_shards(sampled["seed0"], "rollouts")
    assert shard_set.schema.names == ROLLOUTS.names
    for field in ROLLOUTS:
        assert shard_set.schema.field(field.name).type == field.type, field.name
    assert [p["rows"] for p in shard_set.manifest["parts"]] == [BATCH * N, BATCH * N, N]
    assert shard_set.manifest["producer"]["command"] == "mgpo rollout"

    first = [r["id"] for r in open_shards(prompts, "prompts").iter_rows(columns=["id"])][:LIMIT]
    rows = rows_of(sampled["seed0"])
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [
        (pid, s) for pid in first for s in range(N)
    ]
    stops = set(io.stop_token_ids)
    for row in rows:
        ids = row["response_ids"]
        assert 1 <= len(ids) <= MAX_NEW and len(row["logprobs"]) == len(ids)
        assert all(lp <= 0.0 for lp in row["logprobs"])
        assert row["policy_step"] == 0
        assert row["response"] == io.decode(ids)
        if row["finish_reason"] == "stop":
            assert ids[-1] in stops and not stops & set(ids[:-1])
        else:
            assert row["finish_reason"] == "length"
            assert len(ids) == MAX_NEW and not stops & set(ids)


@pytest.mark.parametrize(("name", "temperature"), [("seed0", 1.0), ("t07", 0.7)])
def test_logprobs_match_the_trainers_teacher_forced_forward(
    sampled, prompts, tiny_policy, name: str, temperature: float
) -> None:
    from stages.train.forward import LogprobModel, response_logprobs

    model, io = tiny_policy
    by_id = {r["id"]: prompt_row(r) for r in open_shards(prompts, "prompts").iter_rows()}
    rows = rows_of(sampled[name])
    with torch.no_grad():
        got = response_logprobs(
            LogprobModel(model),
            io,
            [by_id[r["prompt_id"]] for r in rows],
            [r["response_ids"] for r in rows],
            device=torch.device("cpu"),
            temperature=temperature,
            with_entropy=False,
        )
    for i, row in enumerate(rows):
        width = len(row["response_ids"])
        assert int(got.mask[i].sum()) == width
        forward = got.logp[i, :width].double()
        shard = torch.tensor(row["logprobs"], dtype=torch.float64)
        assert torch.max(torch.abs(forward - shard)).item() < 1e-4, (row["prompt_id"], i)


def test_same_seed_same_rows_other_seed_other_rows(sampled) -> None:
    seed0, again, seed1 = (keyed(rows_of(sampled[k])) for k in ("seed0", "seed0_again", "seed1"))
    assert seed0 == again
    assert seed0.keys() == seed1.keys()
    assert [r["response_ids"] for r in seed0.values()] != [
        r["response_ids"] for r in seed1.values()
    ]
    # The n samples of one prompt are distinct draws, not copies.
    first = [seed0[(next(iter(seed0))[0], s)]["response_ids"] for s in range(N)]
    assert len({tuple(ids) for ids in first}) > 1


def test_default_output_and_relative_prompts_are_found_by_score(root, prompts) -> None:
    """``--out`` defaults to PROMPTS-rollouts; the manifest names the prompts by absolute path, so
    ``mgpo score`` finds them from any working directory."""
    work = root / "work"
    (work / "data").mkdir(parents=True)
    shutil.copytree(prompts, work / "data" / "p")
    args = rollout_args(Path("data/p"), Path("x"), "--limit", "1", "-n", "1")
    del args[args.index("--out") : args.index("--out") + 2]
    assert_ok(run_main(*args, cwd=work))
    out = work / "data" / "p-rollouts"
    config = open_shards(out, "rollouts").manifest["producer"]["config"]
    assert config["prompts"] == str((work / "data" / "p").resolve())
    scored = run_main("score", "--rollouts", out, "--reward", "short_answer", cwd=root)
    assert_ok(scored)
    assert open_shards(work / "data" / "p-scores", "scores").num_rows == 1


# ------------------------------------------------------------------------------------ resume


def _wait_for(path: Path, process: subprocess.Popen, deadline_s: float = 180.0) -> None:
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert process.poll() is None, f"rollout exited (rc={process.returncode}) before {path}"
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_rollout_resumes_to_the_uninterrupted_rows(root, prompts) -> None:
    # One prompt per part and one sequence per generate call: several parts, each taking a while.
    extra = ("--limit", "8", "--batch-prompts", "1", "--micro-batch", "1", "--max-new-tokens", "8")
    mine = root / "resume-prompts"  # its own copy: re-prepared in place below
    shutil.copytree(prompts, mine)
    whole, killed = root / "whole", root / "killed"
    assert_ok(run_main(*rollout_args(mine, whole, *extra)))

    staging = staging_dir(killed)
    process = subprocess.Popen(
        cli_command(*rollout_args(mine, killed, *extra)),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(staging / "part-00000.parquet", process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not killed.exists()
    staged = sorted(p.name for p in staging.glob("part-*.parquet"))
    assert 1 <= len(staged) < 8, staged  # stopped part-way
    for name in ("other-seed", "other-content"):
        shutil.copytree(staging, staging_dir(root / name))

    rerun = run_main(*rollout_args(mine, killed, *extra))
    assert_ok(rerun)
    assert f"{len(staged)} prompts already done" in " ".join(rerun.stderr.split())
    bar = [line for line in rerun.stderr.splitlines() if line.startswith("rollout")]
    assert bar and "8/8" in bar[-1] and "tok/s" in bar[-1], rerun.stderr
    assert not staging.exists()
    resumed, straight = keyed(rows_of(killed)), keyed(rows_of(whole))
    assert resumed.keys() == straight.keys()
    for key, row in resumed.items():
        other = straight[key]
        # Same tokens and text; log-probs may differ in the last bits between processes that
        # run with different thread counts (the killed run was a subprocess).
        assert {k: v for k, v in row.items() if k != "logprobs"} == {
            k: v for k, v in other.items() if k != "logprobs"
        }
        assert row["logprobs"] == pytest.approx(other["logprobs"], abs=1e-5)
    assert len(rows_of(killed)) == 8 * N

    # Staged parts are not picked up by other settings or by other prompt content at the same
    # path (re-prepared in place): those runs start over and equal a fresh run.
    def fresh_equals_staged(name: str, *more: str) -> None:
        assert_ok(run_main(*rollout_args(mine, root / name, *extra, *more)))
        assert_ok(run_main(*rollout_args(mine, root / f"{name}-fresh", *extra, *more)))
        assert keyed(rows_of(root / name)) == keyed(rows_of(root / f"{name}-fresh"))

    fresh_equals_staged("other-seed", "--seed", "9")
    assert_ok(
        run_main(
            "prepare",
            "shapes",
            "--size",
            str(N_PROMPTS),
            "--seed",
            "1",
            "--out",
            mine,
            "--overwrite",
        )
    )
    fresh_equals_staged("other-content")
    assert keyed(rows_of(root / "other-content")) != keyed(rows_of(whole))


@pytest.mark.slow
def test_two_processes_killed_mid_rollout_resume_to_the_one_process_rows(root, prompts) -> None:
    """``accelerate launch --num_processes 2 mgpo rollout``, killed (-9, launcher and workers)
    with some parts staged, then rerun: the same rows as one process makes, each once. The
    parts do not depend on which process wrote them (part ``j`` is batch ``j``)."""
    extra = ("--limit", "8", "--batch-prompts", "1", "--micro-batch", "1", "--max-new-tokens", "8")
    one, killed = root / "mp-one", root / "mp-killed"
    assert_ok(run_main(*rollout_args(prompts, one, *extra)))
    process = subprocess.Popen(
        launch_command(2, rollout_args(prompts, killed, *extra)),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging = staging_dir(killed)
    try:
        for part in ("part-00000.parquet", "part-00001.parquet"):  # one of each process
            _wait_for(staging / part, process)
    finally:
        kill_tree(process)
    staged = sorted(p.name for p in staging.glob("part-*.parquet"))
    assert 2 <= len(staged) < 8 and not killed.exists(), staged
    rerun = launch_cli(2, *rollout_args(prompts, killed, *extra))
    assert_ok(rerun)
    assert "already done" in rerun.stderr  # the main process reports its own share
    resumed, straight = keyed(rows_of(killed)), keyed(rows_of(one))
    assert resumed.keys() == straight.keys() and len(resumed) == 8 * N
    for key, row in resumed.items():
        assert row["response_ids"] == straight[key]["response_ids"], key
        assert row["logprobs"] == pytest.approx(straight[key]["logprobs"], abs=1e-5), key
    assert [p["file"] for p in open_shards(killed).manifest["parts"]] == [
        f"part-{j:05d}.parquet" for j in range(8)
    ]


# --------------------------------------------------------------------------------- bad input


def _no_manifest(root: Path, prompts: Path) -> list[str | Path]:
    broken = root / "no-manifest"
    shutil.copytree(prompts, broken)
    (broken / "manifest.json").unlink()
    return ["--prompts", broken]


BAD = {
    "no_manifest": (_no_manifest, ["no-manifest", "manifest.json", "incomplete"]),
    "missing_prompts": (
        lambda root, p: ["--prompts", root / "nowhere"],
        ["no such shard directory"],
    ),
    "missing_model_dir": (
        lambda root, p: ["--prompts", p, "--model", root / "no-model"],
        ["model folder not found", "no-model"],
    ),
    "unknown_backend": (
        lambda root, p: ["--prompts", p, "--backend", "sglang"],
        ["--backend sglang", "unknown backend"],
    ),
    "no_cuda_here": (
        lambda root, p: ["--prompts", p, "--device", "cuda:7"],
        ["--device cuda:7", "CUDA device"],
    ),
    "bad_device": (lambda root, p: ["--prompts", p, "--device", "tpu"], ["--device tpu"]),
    "zero_limit": (lambda root, p: ["--prompts", p, "--limit", "0"], ["--limit must be positive"]),
    "zero_n": (lambda root, p: ["--prompts", p, "-n", "0"], ["-n must be positive"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(root, prompts, name: str) -> None:
    make, fragments = BAD[name]
    out = root / f"bad-{name}"
    args = [
        "rollout",
        "--model",
        "tiny",
        "--max-new-tokens",
        "2",
        "--out",
        out,
        *make(root, prompts),
    ]
    assert_user_error(run_main(*args), *fragments)
    assert_nothing_left(out)


def _prompt_set(path: Path, prompts: list[str]) -> Path:
    """A real prompt shard set of shapes-like rows with the given prompt texts."""
    from PIL import Image

    image = Image.new("RGB", (56, 56), (200, 30, 30))
    rows = [
        {
            "id": f"q{i // 2 if 'dup' in text else i}",
            "prompt": text,
            "images": [image],
            "answer": "red",
            "choices": None,
            "source": "test",
            "meta": {},
        }
        for i, text in enumerate(prompts)
    ]
    return write_shards(path, "prompts", rows, producer={"command": "test"})


BAD_ROWS = {
    # The second prompt (the second part) cannot be encoded: one part was written already.
    "placeholders": (
        ["<image>Colour?", "<image><image>Colour?"],
        ["q1", "2 '<image>'", "1 images"],
    ),
    "duplicate_ids": (["<image>dup", "<image>dup"], ["'q0' appears more than once"]),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_prompt_rows_are_one_line_and_leave_nothing(root, name: str) -> None:
    texts, fragments = BAD_ROWS[name]
    source = _prompt_set(root / f"bad-rows-{name}", texts)
    out = root / f"bad-rows-{name}-out"
    args = ["rollout", "--prompts", source, "--model", "tiny", "--batch-prompts", "1", "-n", "1"]
    assert_user_error(run_main(*args, "--max-new-tokens", "2", "--out", out), *fragments)
    assert_nothing_left(out)


def test_output_onto_the_prompts_is_refused_even_with_overwrite(root, prompts) -> None:
    copy = root / "prompts-copy"
    shutil.copytree(prompts, copy)
    before = json.loads((copy / "manifest.json").read_text())
    for extra in ((), ("--overwrite",)):
        args = ["rollout", "--prompts", copy, "--model", "tiny", "--out", copy, *extra]
        assert_user_error(run_main(*args), "--out", "prompts")
    assert json.loads((copy / "manifest.json").read_text()) == before
    assert not staging_dir(copy).exists()


def test_complete_output_is_refused_unless_overwrite(root, prompts, sampled) -> None:
    out = root / "complete"
    shutil.copytree(sampled["seed1"], out)
    assert_user_error(run_main(*rollout_args(prompts, out)), "already holds a complete shard set")
    assert keyed(rows_of(out)) == keyed(rows_of(sampled["seed1"]))
    assert_ok(run_main(*rollout_args(prompts, out, "--overwrite")))
    assert keyed(rows_of(out)) == keyed(rows_of(sampled["seed0"]))
    assert not staging_dir(out).exists()
