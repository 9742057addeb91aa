"""Scoring many items on K worker processes, each item under a hard time limit.

Why processes that get killed: symbolic comparison can run for ever on adversarial LaTeX
(``9^{9^{9}}`` makes SymPy build an astronomically large integer), inside C code or SymPy loops
that no flag or thread can interrupt. So each worker scores one item at a time, the parent waits
on the workers' pipes with the earliest deadline as its timeout, and a worker still busy at its
item's deadline is killed (SIGKILL) and replaced; the item scores 0 with ``timed_out=True``.
Behind that, each worker carries a kernel CPU-time limit per item (``_cpu_backstop``), so that a
worker whose parent was killed outright cannot spin for ever.

Why ``forkserver`` (``spawn`` where there is none): the parent may have imported torch and run
threads (OpenMP, tokenizers, data loaders); ``fork`` copies such a process with its locks held by
threads that do not exist in the child, which can deadlock. ``forkserver`` forks workers from a
small clean server process, started once, that has imported and warmed up only the math scorer
(``_preload``: math-verify, SymPy); replacing a killed worker then costs a fork (milliseconds),
not a fresh interpreter importing SymPy (about half a second with ``spawn``).

Custom reward files are imported in each worker, never in the parent; a worker reports that it
loaded its function before any item is sent, so a broken file fails before any work is done.

The built-in rewards that cannot hang (``rewards.BOUNDED_REWARDS``: ``short_answer``,
``last_number``) need none of this: they are scored in the calling process
(:func:`stages.score.items.score_in_process`), where sending an item to a worker and back would
cost more than scoring it. Rows and errors are the same.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from stages.errors import MgpoError
from stages.score.items import (
    call_reward,
    check_item,
    reward_error,
    score_in_process,
    score_row,
)
from stages.score.rewards import BOUNDED_REWARDS, builtin_components, load_reward_fn, split_spec

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_STARTUP_TIMEOUT_S = 120.0

# CPU seconds a worker may spend on one item before the kernel ends it (``_cpu_backstop``):
# far above the wall-clock limit the parent enforces, so only an orphaned worker, or one whose
# reward function runs many threads, ever meets it; the item then counts as timed out.
BACKSTOP_FACTOR = 10.0
BACKSTOP_EXTRA_S = 10.0


def _context() -> mp.context.BaseContext:
    """forkserver with the scorer pre-imported, else spawn (see the module docstring)."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Only takes effect if this process's forkserver is not running yet; harmless otherwise.
        ctx.set_forkserver_preload(["stages.score._preload"])
        return ctx
    return mp.get_context("spawn")


def _cpu_backstop(seconds: float) -> None:
    """Let the kernel end this process once it has used ``seconds`` more CPU time (Unix).

    The parent kills a worker that overruns its item, but a parent killed outright (SIGKILL, the
    OOM killer) kills nobody, and a worker deep in a runaway comparison (one C call raising a
    huge integer, GIL held) never reads its pipe again: it would burn a core for ever. The soft
    CPU limit, raised again before every item, bounds that; SIGXCPU's default action ends the
    process without any help from its Python code. Core dumps are turned off first.
    """
    try:
        import resource
    except ImportError:  # not Unix
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _worker_main(
    conn: Connection, spec: str, options: dict[str, Any], backstop_s: float, startup_s: float
) -> None:
    """Worker loop: load the function, say ready, then score items until the pipe closes."""
    _cpu_backstop(startup_s)
    try:
        fn = load_reward_fn(spec)
    except Exception as exc:  # MgpoError from loading, or anything else while importing
        conn.send(("fatal", -1, str(exc) if isinstance(exc, MgpoError) else repr(exc)))
        return
    conn.send(("ready", -1, None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        index, item = message
        _cpu_backstop(backstop_s)
        try:
            row = call_reward(fn, item, options)
        except Exception as exc:
            conn.send(("error", index, f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("ok", index, row))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    index: int | None = None  # the item it is scoring
    deadline: float = 0.0


class _Pool:
    """K workers; start, hand out items, collect messages, kill and replace."""

    def __init__(
        self,
        spec: str,
        options: dict[str, Any],
        workers: int,
        startup_timeout_s: float,
        backstop_s: float,
    ):
        self.spec = spec
        self.options = options
        self.startup_timeout_s = startup_timeout_s
        self.backstop_s = backstop_s
        self.ctx = _context()
        self.workers: list[_Worker] = []
        for _ in range(workers):
            self.workers.append(self._start())

    def _start(self) -> _Worker:
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        args = (child_end, self.spec, self.options, self.backstop_s, self.startup_timeout_s)
        process = self.ctx.Process(target=_worker_main, args=args, daemon=True)
        process.start()
        child_end.close()
        return _Worker(process=process, conn=parent_end)

    def replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (whatever it is doing) and put a fresh one in its place."""
        self._stop(worker, kill=True)
        self.workers[self.workers.index(worker)] = self._start()

    @staticmethod
    def _stop(worker: _Worker, kill: bool) -> None:
        if kill:
            worker.process.kill()
        worker.conn.close()  # an idle worker sees EOF and exits
        worker.process.join(timeout=None if kill else 2.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()

    def close(self) -> None:
        for worker in self.workers:
            # A worker still busy (the caller stopped early or an error is propagating) is killed.
            self._stop(worker, kill=worker.index is not None or not worker.ready)
        self.workers = []

    def wait_ready(self) -> None:
        """Block until every worker has loaded the reward function; MgpoError if one cannot."""
        while not all(w.ready for w in self.workers):
            starting = [w for w in self.workers if not w.ready]
            left = self.startup_timeout_s - (time.monotonic() - min(w.started for w in starting))
            if left <= 0:
                raise MgpoError(
                    f"--reward {self.spec!r}: worker did not load the reward function within "
                    f"{self.startup_timeout_s:g} s"
                )
            for conn in wait([w.conn for w in starting], timeout=left):
                self.receive(self.by_conn(conn))

    def by_conn(self, conn: Any) -> _Worker:
        return next(w for w in self.workers if w.conn is conn)

    def receive(self, worker: _Worker) -> tuple[str, int, Any] | None:
        """One message from ``worker``; start-up messages are handled here (None returned)."""
        try:
            kind, index, payload = worker.conn.recv()
        except (EOFError, OSError):
            # The pipe closes a moment before the exit code is known.
            worker.process.join(timeout=5.0)
            code = worker.process.exitcode
            if code == -signal.SIGXCPU and worker.index is not None:
                return ("timeout", worker.index, None)  # the kernel's CPU backstop ended it
            what = "while loading" if not worker.ready else "while scoring an item"
            return (
                "died",
                -1 if worker.index is None else worker.index,
                f"{what} (exit code {code})",
            )
        if kind == "fatal":
            raise MgpoError(payload)
        if kind == "ready":
            worker.ready = True
            return None
        return kind, index, payload


def score_items(
    items: Iterable[Mapping[str, Any]],
    reward_fn_spec: str = "math",
    *,
    workers: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    options: Mapping[str, Any] | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> Iterator[dict[str, Any]]:
    """Score ``items`` in order, each within ``timeout_s`` seconds.

    Each item is a mapping with ``response`` and ``answer`` (str) and any other fields the reward
    function takes (``prompt_id``, ``sample``, ``choices``, ...); see ``rewards`` for how a
    function is called. ``options`` are passed to every call as keyword arguments (for ``math``:
    ``format_weight``). Yields, in input order, rows
    ``{prompt_id, sample, reward, <components>, extracted, timed_out}``; an item that runs past
    ``timeout_s`` gets ``reward`` and every component 0.0, ``extracted`` "" and
    ``timed_out=True``, and its worker is killed and replaced. An item whose reward or a component
    is NaN or infinite scores 0 in every component, with ``non_finite=True``.

    Raises MgpoError for a bad spec or option here, before any work; for a reward file that fails
    to load before the first item is scored; and for an item whose reward function raises,
    returns something other than a number or a dict with ``reward``, or kills its worker,
    naming the item and the function. Items are read lazily, at most ``workers`` ahead.
    """
    pool = ScorePool(
        reward_fn_spec,
        workers=workers,
        timeout_s=timeout_s,
        options=options,
        startup_timeout_s=startup_timeout_s,
    )
    return _score_once(pool, items)


def _score_once(pool: ScorePool, items: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    with pool:
        yield from pool.score(items)


class ScorePool:
    """``score_items`` with its worker processes kept between calls.

    The trainer scores a batch every step; starting the workers each time costs a few tenths of a
    second, as much as scoring a batch of short answers. Workers start on the first ``score``;
    after a call that ends early or with an error they are stopped and the next call starts
    fresh ones. Use as a context manager, or call ``close``.
    """

    def __init__(
        self,
        reward_fn_spec: str = "math",
        *,
        workers: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        options: Mapping[str, Any] | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        if workers < 1:
            raise MgpoError(f"--workers must be at least 1, got {workers}")
        if not 0 < timeout_s < float("inf"):  # NaN fails both comparisons
            raise MgpoError(f"reward time limit must be a positive number, got {timeout_s}")
        split_spec(reward_fn_spec)
        self.spec, self.workers, self.timeout_s = reward_fn_spec, workers, timeout_s
        self.options = dict(options or {})
        self.startup_timeout_s = startup_timeout_s
        self._pool: _Pool | None = None

    def score(self, items: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        """Rows for ``items`` in input order, as ``score_items`` yields them."""
        if self.spec in BOUNDED_REWARDS:
            yield from score_in_process(items, self.spec, self.options)
            return
        if self._pool is None:
            backstop_s = BACKSTOP_FACTOR * self.timeout_s + BACKSTOP_EXTRA_S
            self._pool = _Pool(
                self.spec, self.options, self.workers, self.startup_timeout_s, backstop_s
            )
        finished = False
        try:
            yield from _score(
                self._pool, items, self.spec, self.options, self.timeout_s, self.startup_timeout_s
            )
            finished = True
        finally:
            if not finished:  # an error, or the caller stopped early: workers may be busy
                self.close()

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.close()
            self._pool = None

    def __enter__(self) -> ScorePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score(
    pool: _Pool,
    items: Iterable[Mapping[str, Any]],
    spec: str,
    options: dict[str, Any],
    timeout_s: float,
    startup_timeout_s: float,
) -> Iterator[dict[str, Any]]:
    components = builtin_components(spec)
    names: dict[int, Mapping[str, Any]] = {}  # index -> item identity, until its row is yielded
    done: dict[int, dict[str, Any] | None] = {}  # index -> row (None: timed out)
    non_finite: set[int] = set()  # items whose reward came back NaN or infinite (scored 0)
    source = iter(items)
    taken = 0
    exhausted = False
    emitted = 0

    def fail(index: int, message: str) -> MgpoError:
        return reward_error(spec, names[index], message)

    def row_of(index: int, result: dict[str, Any] | None) -> dict[str, Any]:
        item = names.pop(index)
        timed = result is None
        if result is None:
            result = {"reward": 0.0, **dict.fromkeys(components or (), 0.0), "extracted": ""}
        return score_row(item, result, timed_out=timed, non_finite=index in non_finite)

    pool.wait_ready()
    while True:
        for worker in pool.workers:
            if exhausted or not worker.ready or worker.index is not None:
                continue
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            check_item(taken, item, options)
            names[taken] = {"prompt_id": item.get("prompt_id"), "sample": item.get("sample")}
            worker.index, worker.deadline = taken, time.monotonic() + timeout_s
            worker.conn.send((taken, dict(item)))
            taken += 1

        # Rows leave in input order. A timed-out row of a custom function waits until some
        # item has shown the function's component names, so every row has the same columns.
        while emitted in done and (components is not None or done[emitted] is not None):
            yield row_of(emitted, done.pop(emitted))
            emitted += 1
        busy = [w for w in pool.workers if w.index is not None]
        if exhausted and not busy:
            if components is None:
                components = ()
            while emitted in done:
                yield row_of(emitted, done.pop(emitted))
                emitted += 1
            return

        watched = [w for w in pool.workers if w.index is not None or not w.ready]
        deadline = min(
            [w.deadline for w in busy]
            + [w.started + startup_timeout_s for w in watched if not w.ready]
        )
        for conn in wait([w.conn for w in watched], timeout=max(0.0, deadline - time.monotonic())):
            worker = pool.by_conn(conn)
            message = pool.receive(worker)
            if message is None:
                continue
            kind, index, payload = message
            if kind == "timeout":
                done[index] = None
                worker.index = None
                pool.replace(worker)
                continue
            if kind == "died":
                if index < 0:
                    raise MgpoError(f"--reward {spec!r}: worker process exited {payload}")
                raise fail(index, f"its worker process exited {payload}")
            worker.index = None
            if kind == "error":
                raise fail(index, payload)
            result = dict(payload)
            if result.pop("non_finite", False):  # check_result zeroed a NaN/inf value
                non_finite.add(index)
            got = tuple(k for k in result if k not in ("reward", "extracted"))
            if components is None:
                components = got
            elif set(got) != set(components):
                raise fail(
                    index,
                    f"returned components {sorted(got)}, not {sorted(components)} as before",
                )
            done[index] = result

        now = time.monotonic()
        for worker in list(pool.workers):
            if worker.index is not None and worker.deadline <= now:
                done[worker.index] = None
                worker.index = None
                pool.replace(worker)
            elif not worker.ready and worker.started + startup_timeout_s <= now:
                raise MgpoError(
                    f"--reward {spec!r}: worker did not load the reward function within "
                    f"{startup_timeout_s:g} s"
                )


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | int]:
    """Counts and means of score rows: ``items``, ``timed_out``, ``reward_mean`` and the mean of
    every numeric component (``accuracy_mean``, ...); means are 0.0 for no rows."""
    count = 0
    flags = {"timed_out": 0, "non_finite": 0}  # items scored 0: past the limit, NaN/inf reward
    sums: dict[str, float] = {}
    for row in rows:
        count += 1
        for flag in flags:
            flags[flag] += bool(row.get(flag))
        for key, value in row.items():
            if key in ("prompt_id", "sample") or isinstance(value, (str, bool)):
                continue
            if isinstance(value, (int, float)):
                sums[key] = sums.get(key, 0.0) + float(value)
    summary: dict[str, float | int] = {"items": count, **flags}
    for key, total in sums.items():
        summary[f"{key}_mean"] = total / count
    return summary
