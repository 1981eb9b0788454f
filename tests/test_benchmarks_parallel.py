"""The parallel runner of the realistic tier: unit order, the job pool's limit, exit codes and progress."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import parallel, protocol, realistic, realistic_auto


def test_language_model_units_start_first() -> None:
    units = parallel.longest_first(["mnist1d-resnet", "stdlib-charlm"], [0, 1, 2])
    assert [u.workload for u in units[:3]] == ["stdlib-charlm"] * 3
    assert units[0].args() == ["--workloads", "stdlib-charlm", "--seeds", "0"]


def test_pool_runs_every_command_at_most_jobs_at_a_time(tmp_path: Path) -> None:
    """Each child records when it ran; no more than two overlap, and every one ran once."""
    script = (
        "import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); a = time.time(); time.sleep(0.4); "
        "p.write_text(f'{a} {time.time()}'); print('ran', p.name)"
    )
    commands = [[sys.executable, "-c", script, str(tmp_path / f"{i}.txt")] for i in range(5)]
    lines: list[str] = []
    codes = parallel.run_pool(commands, jobs=2, log=lines.append)
    assert codes == [0] * 5
    spans = [tuple(map(float, (tmp_path / f"{i}.txt").read_text().split())) for i in range(5)]
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= 2  # running at this start, itself included
    assert sum("ran" in line for line in lines) == 5
    progress = [line for line in lines if line.startswith("[parallel]")]
    assert len(progress) == 5
    assert "5/5 done" in progress[-1]
    assert "min left" in progress[-1]


def test_pool_reports_failures_and_rejects_no_jobs() -> None:
    codes = parallel.run_pool([[sys.executable, "-c", "raise SystemExit(2)"]], jobs=3, log=lambda line: None)
    assert codes == [2]
    with pytest.raises(ValueError, match="`jobs` must be at least 1, got 0"):
        parallel.run_pool([], jobs=0)


def test_docstring_examples() -> None:
    assert doctest.testmod(parallel).failed == 0


def test_sigterm_stops_the_pool_and_its_children(tmp_path: Path) -> None:
    """A pool killed with SIGTERM terminates the running children and starts no queued one."""
    child = "import os, sys, time, pathlib; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(60)"
    pool = (
        "import sys; from benchmarks import parallel; parallel.interrupt_on_sigterm(); "
        f"cmds = [[sys.executable, '-c', {child!r}, rf'{tmp_path}/' + str(i)] for i in range(3)]; "
        "parallel.run_pool(cmds, jobs=2, log=lambda line: None)"
    )
    process = subprocess.Popen([sys.executable, "-c", pool], cwd=Path(parallel.__file__).parents[1])
    deadline = time.time() + 30
    written = [tmp_path / str(i) for i in range(2)]
    while not all(f.exists() and f.read_text() for f in written) and time.time() < deadline:
        time.sleep(0.1)
    pids = [int(f.read_text()) for f in written]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) != 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "2").exists()  # the queued command never started


def test_a_command_the_runner_cannot_start_is_a_failure() -> None:
    lines: list[str] = []
    codes = parallel.run_pool([["/nonexistent/command"], [sys.executable, "-c", "pass"]], jobs=1, log=lines.append)
    assert codes == [parallel.FAILED, 0]
    assert any("command 1 failed in the runner" in line for line in lines)


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    ignores = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", ignores], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    began = time.monotonic()
    parallel._stop([child], grace=0.5)
    assert child.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 10


def test_a_unit_counts_as_recorded_only_with_every_run_file(tmp_path: Path) -> None:
    unit = parallel.Unit("stdlib-charlm", 0)
    workload = realistic.WORKLOADS[unit.workload]
    cells = [("dense", None), *((m, s) for s in workload.sparsities for m in realistic.METHODS)]
    for method, sparsity in cells:
        protocol.write_json(protocol.run_path(tmp_path, unit.workload, method, sparsity, 0), {})
    assert parallel.recorded("realistic", tmp_path, unit)
    protocol.run_path(tmp_path, unit.workload, "default", workload.sparsities[-1], 0).unlink()
    assert not parallel.recorded("realistic", tmp_path, unit)
    assert not parallel.recorded("realistic_auto", tmp_path, unit)


def test_an_automatic_seed_file_without_its_fixed_sweep_is_not_finished(tmp_path: Path) -> None:
    """The language model's seed file needs its like-for-like fixed sweep; the ResNet's has none to need."""
    lm, resnet = parallel.Unit("stdlib-charlm", 0), parallel.Unit("mnist1d-resnet", 0)
    protocol.write_json(tmp_path / lm.workload / "seed0.json", {"seed": 0})
    protocol.write_json(tmp_path / resnet.workload / "seed0.json", {"seed": 0})
    assert not parallel.recorded("realistic_auto", tmp_path, lm)
    assert parallel.recorded("realistic_auto", tmp_path, resnet)
    protocol.write_json(tmp_path / lm.workload / "seed0.json", {"seed": 0, "matched": {"runs": []}})
    assert parallel.recorded("realistic_auto", tmp_path, lm)


def test_an_unknown_workload_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parallel.main(["realistic_auto", "--workloads", "stdlib-gpt"])
    assert "--workloads must be among mnist1d-resnet, stdlib-charlm; got stdlib-gpt" in capsys.readouterr().err


def test_the_summary_is_written_from_the_committed_automatic_records(tmp_path: Path) -> None:
    """The runner's last step on real run files: the same summary the script writes, and no fit."""
    committed = realistic_auto.RESULTS
    for path in committed.glob("*/seed*.json"):
        target = tmp_path / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    written = parallel.write_summary("realistic_auto", tmp_path)
    summary = json.loads(written.read_text())
    expected = realistic_auto.load_summary(committed)
    assert expected is not None
    assert set(summary) == set(expected) == {"mnist1d-resnet", "stdlib-charlm"}
    for name, entry in expected.items():
        assert set(summary[name]) == set(entry)
        for key, value in entry.items():  # the file keeps 6 decimals
            assert summary[name][key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value)
