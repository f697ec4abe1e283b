"""bench/samplers.py's CPU accounting: /proc read right, shares computed per window."""

from __future__ import annotations

import os
from pathlib import Path

from bench.samplers import Sampler, children_cpu, cpu_row, cpu_seconds

TICKS = os.sysconf("SC_CLK_TCK")


def stat_line(pid: int, command: str, ppid: int, utime: int, stime: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    return f"{pid} ({command}) R {ppid} 1 1 0 -1 4194304 10 0 0 0 {utime} {stime} 0 0 20 0 1\n"


def test_cpu_seconds_counts_user_and_system_past_an_odd_command_name() -> None:
    assert cpu_seconds(stat_line(7, "VLLM::Engine Core) R (x", 1, 3 * TICKS, TICKS)) == 4.0


def test_children_are_split_into_engine_cores_and_the_rest(tmp_path: Path) -> None:
    def process(pid: int, ppid: int, cmdline: bytes, ticks: int) -> None:
        folder = tmp_path / str(pid)
        folder.mkdir()
        (folder / "stat").write_text(stat_line(pid, "python3", ppid, ticks, 0))
        (folder / "cmdline").write_bytes(cmdline)

    process(10, 1, b"python3\0-m\0bench.steady", TICKS)
    process(11, 10, b"VLLM::EngineCore", 5 * TICKS)
    process(12, 10, b"python3\0render-worker", 2 * TICKS)
    process(13, 10, b"python3\0render-worker", TICKS)
    process(14, 11, b"python3\0grandchild", 9 * TICKS)
    (tmp_path / "15").mkdir()  # a process that ended between listing and reading
    assert children_cpu(10, tmp_path) == {"engine_core": 5.0, "other_children": 3.0}


def test_this_process_is_measured() -> None:
    row = cpu_row()
    assert row["frontend"] > 0 and row["load"] >= 0


def test_a_window_reports_the_share_of_a_cpu_each_process_used() -> None:
    sampler = Sampler.__new__(Sampler)
    base = {"running": 1.0, "waiting": 0.0, "kv": 0.1, "steps": 0.0, "generated": 0.0}
    sampler.rows = [
        {**base, "t": 0.0, "cpu_frontend": 1.0, "cpu_engine_core": 10.0,
         "cpu_other_children": 0.0, "cpu_load": 4.0},
        {**base, "t": 10.0, "cpu_frontend": 4.0, "cpu_engine_core": 19.5,
         "cpu_other_children": 15.0, "cpu_load": 6.0},
        {**base, "t": 30.0, "cpu_frontend": 99.0, "cpu_engine_core": 99.0,
         "cpu_other_children": 99.0, "cpu_load": 50.0},
    ]
    figures = sampler.window(0.0, 10.0)
    assert figures["cpu_frontend"] == 0.3
    assert figures["cpu_engine_core"] == 0.95
    assert figures["cpu_other_children"] == 1.5
    assert figures["host_load_1m_mean"] == 5.0
