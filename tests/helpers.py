"""Shared test builders: local data in the real upstream layouts, and the CLI as a subprocess.

The builders write exactly what users have on disk: the hub's ``hiyouga/geometry3k`` parquet
(``images`` as a list of Hugging Face ``Image`` structs, with the ``datasets`` features metadata),
json/jsonl files pointing at image paths, and the original Inter-GPS release (one folder per
problem with ``data.json`` and ``img_diagram.png``).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parent.parent

_HF_CACHE: str | None = None

# A reward that a random policy earns about a fifth of the time, so every training step has signal
# (tests write it to a file and pass --set score.reward=FILE:vowel).
VOWEL_REWARD = """
def vowel(response, answer, **kwargs):
    text = response.strip().lower()
    return {"reward": float(text[:1] in "aeiou" and text != ""), "accuracy": float(text == answer.lower())}
"""


def png_bytes(
    width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def geometry3k_columns(
    n: int, split: str = "train", size: tuple[int, int] = (64, 48)
) -> dict[str, list[Any]]:
    """``n`` problems with distinct answers and images (colour encodes the row)."""
    return {
        "images": [
            [{"bytes": png_bytes(*size, (i * 37 % 256, 100, 200)), "path": None}] for i in range(n)
        ],
        "problem": [f"<image>Find x in figure {split} {i}." for i in range(n)],
        "answer": [f"{split}-{i * 1.5}" for i in range(n)],
    }


def write_geometry3k_parquet(path: str | os.PathLike, columns: dict[str, list[Any]]) -> Path:
    """Write columns the way the hub copy stores them (Image structs + features metadata)."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as HFImage

    features = {"images": List(HFImage()), "problem": Value("string"), "answer": Value("string")}
    features = Features({k: v for k, v in features.items() if k in columns})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def make_geometry3k_parquet(
    directory: str | os.PathLike,
    n: int,
    split: str = "train",
    *,
    size: tuple[int, int] = (64, 48),
    filename: str | None = None,
) -> Path:
    """A hub-style split file, ``{split}-00000-of-00001.parquet`` unless ``filename`` is given."""
    name = filename or f"{split}-00000-of-00001.parquet"
    return write_geometry3k_parquet(Path(directory) / name, geometry3k_columns(n, split, size))


def make_geometry3k_jsonl(directory: str | os.PathLike, n: int, split: str = "train") -> Path:
    """A jsonl file whose ``images`` are paths relative to the file (written beside it)."""
    directory = Path(directory)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    path = directory / f"{split}.jsonl"
    with open(path, "w") as handle:
        for i in range(n):
            (directory / "img" / f"{split}-{i}.png").write_bytes(
                png_bytes(40, 30, (10, i * 20, 90))
            )
            record = {
                "images": [f"img/{split}-{i}.png"],
                "problem": f"<image>Json problem {i}.",
                "answer": str(100 + i),
            }
            handle.write(json.dumps(record) + "\n")
    return path


INTERGPS_DIRS = {"train": "train", "validation": "val", "test": "test"}


def make_intergps(
    directory: str | os.PathLike, n: int, splits: Sequence[str] = ("train", "validation", "test")
) -> Path:
    """The Inter-GPS release: ``SPLITDIR/ID/data.json`` (letter answer) + ``img_diagram.png``."""
    root = Path(directory)
    for split in splits:
        for i in range(n):
            folder = root / INTERGPS_DIRS[split] / str(i)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "img_diagram.png").write_bytes(png_bytes(50, 40, (i * 50 % 256, 0, 0)))
            data = {
                "id": i,
                "problem_text": f"{split} problem {i}: find the angle.",
                "choices": [f"{i}.0", f"{i + 1}.5", f"{i + 2}", f"{i * 3}"],
                "answer": "ABCD"[i % 4],
                "problem_type_graph": ["Triangle"],
            }
            (folder / "data.json").write_text(json.dumps(data))
    return root


def hf_cache() -> str:
    """One throwaway ``datasets`` cache for every CLI run of the test session."""
    global _HF_CACHE
    if _HF_CACHE is None:
        _HF_CACHE = tempfile.mkdtemp(prefix="mgpo-tests-hf-")
        atexit.register(shutil.rmtree, _HF_CACHE, True)
    return _HF_CACHE


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_CACHE": hf_cache(),
            "NO_COLOR": "1",
            "COLUMNS": "200",
            "TERM": "dumb",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def cli_command(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "mgpo_cli", *map(str, args)]


def run_cli(
    *args: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``mgpo ARGS`` in a fresh interpreter, capturing text output (``env``: extra variables)."""
    return subprocess.run(
        cli_command(*args),
        cwd=cwd,
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def launch_command(
    processes: int, args: Sequence[str | os.PathLike], launcher: str = "accelerate"
) -> list[str]:
    """The command line starting ``mgpo ARGS`` on ``processes`` CPU processes (gloo).

    ``accelerate launch --multi_gpu`` is how accelerate starts several processes on a machine
    without GPUs (``--cpu --num_processes 2`` would start one, and so prove nothing);
    ``torchrun`` is the other supported launcher."""
    if processes == 1:
        return cli_command(*args)
    if launcher == "torchrun":
        start = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m"]
    else:
        start = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
        start += ["--num_processes", str(processes), "--mixed_precision", "no"]
        start += ["--dynamo_backend", "no", "-m"]
    return [sys.executable, *start, "mgpo_cli", *map(str, args)]


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a launched job: the launcher and every worker. (torchrun's agent starts each
    worker in a session of its own, so killing the launcher's process group leaves them
    running to the end.)"""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for victim in [*children, psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    process.wait()


def launch_cli(
    processes: int,
    *args: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``mgpo ARGS`` as ``processes`` processes under ``accelerate launch``."""
    return subprocess.run(
        launch_command(processes, args),
        cwd=cwd,
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(
    *args: str | os.PathLike, cwd: str | os.PathLike | None = None
) -> subprocess.CompletedProcess:
    """Run ``mgpo ARGS`` through the console entry point in this process (no interpreter start).

    The same code path as the installed ``mgpo`` script (``mgpo_cli.app.main``: user errors become
    one ``error:`` line and exit code 2); for the many small cases where a subprocess per case
    would only add start-up time.
    """
    import contextlib

    import datasets.config

    from mgpo_cli.app import main

    stdout, stderr = io.StringIO(), io.StringIO()
    argv, here, cache = sys.argv, os.getcwd(), datasets.config.HF_DATASETS_CACHE
    code: int | str | None = 0
    try:
        sys.argv = ["mgpo", *map(str, args)]
        datasets.config.HF_DATASETS_CACHE = Path(hf_cache())  # keep ~/.cache clean
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code
    finally:
        sys.argv = argv
        datasets.config.HF_DATASETS_CACHE = cache
        os.chdir(here)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def run_many(
    calls: Sequence[tuple[Sequence[str | os.PathLike], str | os.PathLike | None]],
    workers: int = 3,
) -> list[subprocess.CompletedProcess]:
    """Run several independent ``(args, cwd)`` CLI calls side by side; results in call order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_cli, *args, cwd=cwd) for args, cwd in calls]
        return [future.result() for future in futures]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line (the last) holding ``fragments``."""
    detail = f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stderr, detail
    errors = error_lines(result)
    assert len(errors) == 1, detail
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last == errors[0], detail
    for fragment in fragments:
        assert fragment in errors[0], detail
    return errors[0]


def assert_nothing_left(out: Path) -> None:
    """Neither the output directory nor its hidden staging directory exists."""
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert not (out.parent / f".{out.name}.partial").exists()
