"""Run a realistic-tier script as parallel single-thread jobs, one (workload, seed) unit per job.

The tier's scripts fit one model at a time; recorded at one torch thread, their fits add up to more
than the 3 hours the tier may take. Two single-thread jobs use both cores of the machine, and
different (workload, seed) units share nothing but the results directory: each writes its own run
files, trains or reads its own dense state and keeps its own scratch directory. Units start longest
first (the language model's before the ResNet's), each as ``python -m benchmarks.<script> --resume
--threads 1 --workloads W --seeds S``, so a rerun resumes where the last one stopped. When every unit
has its run files the summary of every record is written, as the script itself writes it (a job
that exits without its run files, as one stopped by a signal may, counts as unfinished).

The structured track is not run this way: its latency is measured at 1 and 2 threads, which a job on
the other core would distort.

Usage::

    python -m benchmarks.parallel realistic --jobs 2          # the fixed-sparsity grid
    python -m benchmarks.parallel realistic_auto --jobs 2     # the automatic mode
    python -m benchmarks.parallel realistic_auto --workloads stdlib-charlm   # one workload's units
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Relative cost of one unit of each workload (a language-model fine-tune costs about twice a
#: ResNet one, BENCHMARKS.md): the longest units start first, so the last job to finish ends soonest.
WORKLOAD_COST = {"stdlib-charlm": 2.0, "mnist1d-resnet": 1.0}
SCRIPTS = ("realistic", "realistic_auto")
#: The exit code recorded for a command the pool could not run to its end (never started, or its
#: output could not be read).
FAILED = -1
#: Seconds a terminated job gets to stop before it is killed. Lightning handles SIGTERM itself and
#: stops at the next batch, which a fit may not reach; a killed job's partial run is redone on resume.
STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Unit:
    """One job: a workload and a seed of a script.

    Attributes:
        workload: the workload's name.
        seed: the seed.
    """

    workload: str
    seed: int

    def args(self) -> list[str]:
        """The script's arguments that select this unit."""
        return ["--workloads", self.workload, "--seeds", str(self.seed)]


def longest_first(workloads: Sequence[str], seeds: Sequence[int] | Mapping[str, Sequence[int]]) -> list[Unit]:
    """Every (workload, seed) unit, the costliest workloads first, seeds in order.

    ``seeds`` is one list for every workload, or each workload's own.

    Example:
        >>> [(u.workload, u.seed) for u in longest_first(["mnist1d-resnet", "stdlib-charlm"], [0, 1])]
        [('stdlib-charlm', 0), ('stdlib-charlm', 1), ('mnist1d-resnet', 0), ('mnist1d-resnet', 1)]
        >>> own = {"mnist1d-resnet": [0, 1, 2], "stdlib-charlm": [0]}
        >>> [(u.workload, u.seed) for u in longest_first(["mnist1d-resnet", "stdlib-charlm"], own)]
        [('stdlib-charlm', 0), ('mnist1d-resnet', 0), ('mnist1d-resnet', 1), ('mnist1d-resnet', 2)]
    """
    ranked = sorted(workloads, key=lambda w: -WORKLOAD_COST.get(w, 1.0))
    return [Unit(w, s) for w in ranked for s in (seeds[w] if isinstance(seeds, Mapping) else seeds)]


def run_pool(commands: Sequence[Sequence[str]], jobs: int, log: Callable[[str], None] = print) -> list[int]:
    """Run ``commands`` as subprocesses, at most ``jobs`` at a time, in order; return their exit codes.

    Each child's output lines are passed to ``log`` prefixed with its index. After each command ends,
    one line says how many are done, the time so far, and the time left estimated from the mean
    duration of the finished commands. An interrupt (``KeyboardInterrupt``, or SIGTERM after
    :func:`interrupt_on_sigterm`) starts no further command, terminates the running ones, waits
    for them and is raised again: no child outlives the pool, and a rerun with ``--resume`` redoes
    only the interrupted runs.

    Raises:
        ValueError: if ``jobs`` is below 1.

    Example:
        >>> run_pool([[sys.executable, "-c", "print('hi')"], [sys.executable, "-c", "raise SystemExit(3)"]], 2,
        ...          log=lambda line: None)
        [0, 3]
    """
    if jobs < 1:
        raise ValueError(f"`jobs` must be at least 1, got {jobs}.")
    codes: list[int | None] = [None] * len(commands)  # None: never started, or its worker failed
    durations: list[float] = []
    queue = list(enumerate(commands))
    lock = threading.Lock()
    stopping = threading.Event()
    running: dict[int, subprocess.Popen[str]] = {}
    start = time.perf_counter()

    def run_one(index: int, command: Sequence[str]) -> None:
        with lock:
            if stopping.is_set():
                return
            began = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running[index] = child
        with child:
            assert child.stdout is not None
            for line in child.stdout:
                log(f"[{index + 1}/{len(commands)}] {line.rstrip()}")
            codes[index] = child.wait()
        with lock:
            del running[index]
            if stopping.is_set():
                return
            durations.append(time.perf_counter() - began)
            done, left = len(durations), len(commands) - len(durations)
            estimate = sum(durations) / done * left / jobs
        log(
            f"[parallel] {done}/{len(commands)} done (exit {codes[index]}) after "
            f"{(time.perf_counter() - start) / 60:.0f} min; about {estimate / 60:.0f} min left"
        )

    def worker() -> None:
        while True:
            with lock:
                if not queue or stopping.is_set():
                    return
                index, command = queue.pop(0)
            try:
                run_one(index, command)
            except Exception as error:  # a unit whose output or start failed is a failed unit, never a success
                codes[index] = FAILED
                log(f"[parallel] command {index + 1} failed in the runner: {error!r}")

    threads = [threading.Thread(target=worker) for _ in range(min(jobs, len(commands)))]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)  # a signal interrupts a sleep of the main thread at once
    except KeyboardInterrupt:
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stopping.set()
            with lock:
                children = list(running.values())
            _stop(children)
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        raise
    return [FAILED if code is None else code for code in codes]


def _stop(children: Sequence[subprocess.Popen[str]], grace: float = STOP_GRACE_SECONDS) -> None:
    """Terminate ``children``; kill any still running after ``grace`` seconds (a fit may finish its batch first)."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, ``timeout``) into ``KeyboardInterrupt``, so :func:`run_pool` stops its children."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def recorded(script: str, out: Path, unit: Unit) -> bool:
    """Whether every run file of ``unit`` exists under ``out`` (a job stopped by a signal may exit 0 without them).

    Example:
        >>> recorded("realistic_auto", Path("/nonexistent"), Unit("stdlib-charlm", 0))
        False
    """
    from benchmarks import protocol, realistic, realistic_auto

    if script == "realistic_auto":
        path = out / unit.workload / f"seed{unit.seed}.json"
        if not path.exists():
            return False
        return realistic_auto.seed_finished(realistic_auto.SETUPS[unit.workload], json.loads(path.read_text()))
    cells = realistic.unit_cells(realistic.WORKLOADS[unit.workload])
    return all(protocol.run_path(out, unit.workload, m, s, unit.seed).exists() for m, s in cells)


def select_workloads(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The workloads of ``--workloads`` in the script's order (all of ``available`` when ``None``).

    Example:
        >>> select_workloads(["mnist1d-resnet", "stdlib-charlm"], ["stdlib-charlm"])
        ['stdlib-charlm']
        >>> select_workloads(["mnist1d-resnet"], ["resnet"])
        Traceback (most recent call last):
        ...
        ValueError: --workloads must be among mnist1d-resnet; got resnet
    """
    if wanted is None:
        return list(available)
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise ValueError(f"--workloads must be among {', '.join(available)}; got {', '.join(unknown)}")
    return [w for w in available if w in wanted]


def write_summary(script: str, out: Path) -> Path:
    """Write ``out/summary.json`` as ``script`` does at its end (fits nothing); return its path."""
    from benchmarks import realistic, realistic_auto

    if script == "realistic":
        realistic.write_summary(out)
    elif realistic_auto.write_summary(out) is None:
        raise FileNotFoundError(f"No automatic-mode run file under {out}: nothing to summarise.")
    return out / "summary.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    from benchmarks import realistic, realistic_auto

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", choices=SCRIPTS)
    parser.add_argument("--jobs", type=int, default=2, help="parallel single-thread jobs (default 2)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the script's seeds")
    parser.add_argument("--workloads", nargs="+", default=None, help="default: every workload of the script")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the script's --out (realistic: the tier's root; realistic_auto: its automatic/ directory, whose "
        "parent holds the dense states); default: the script's own",
    )
    args = parser.parse_args(argv)
    default_seeds: Sequence[int] | Mapping[str, Sequence[int]]
    if args.script == "realistic":
        workloads, out = list(realistic.WORKLOADS), realistic.RESULTS
        default_seeds = {name: w.seeds for name, w in realistic.WORKLOADS.items()}
    else:
        workloads, default_seeds, out = list(realistic_auto.SETUPS), realistic_auto.SEEDS, realistic_auto.RESULTS
    try:
        workloads = select_workloads(workloads, args.workloads)
    except ValueError as error:
        parser.error(str(error))
    out = args.out if args.out is not None else out
    seeds = args.seeds if args.seeds is not None else default_seeds
    base = [sys.executable, "-m", f"benchmarks.{args.script}", "--resume", "--threads", "1", "--out", str(out)]
    units = longest_first(workloads, seeds)
    interrupt_on_sigterm()
    realistic.say(f"{args.script}: {len(units)} (workload, seed) units in {args.jobs} parallel single-thread jobs")
    codes = run_pool([base + unit.args() for unit in units], args.jobs, log=lambda line: print(line, flush=True))
    failed = [
        f"{u.workload} seed {u.seed} (exit {c})"
        for u, c in zip(units, codes, strict=True)
        if c != 0 or not recorded(args.script, out, u)
    ]
    if failed:
        realistic.say(f"{args.script}: units not finished: {', '.join(failed)}; rerun to resume them.")
        return 1
    realistic.say(f"{args.script}: every unit recorded; summary in {write_summary(args.script, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
