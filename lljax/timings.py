"""Where a run's time goes: the whole process split into import, data, training and every metric family's
execution, compilation (per program), checkpointing, tables, figures and the report. Every run folder gets a
timings.json; `--timings` prints the breakdown.

Compilation is measured from JAX's own monitoring events (tracing, lowering and XLA compilation of each jitted
program, with its name) and charged to the section that was running, so a section's execution is its wall time
less the compilation inside it (at least 0: programs compiled in a thread at the same time as others, as a group's
training program beside its initialisation, add up to more compilation seconds than wall seconds).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_ACTIVE: list["Timings"] = []  # the recorder JAX's (process-wide) listener reports to
_LISTENING = []


def process_start() -> float:
    """The time this process started (Linux /proc; else the first import of lljax)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def _listener(event: str, duration: float, **kwargs) -> None:
    if event in COMPILE_EVENTS and _ACTIVE:
        _ACTIVE[-1].add_compile(str(kwargs.get("fun_name", "?")), duration)


class Timings:
    """A run's time, by section (wall seconds) and by compiled program."""

    def __init__(self):
        self.start = time.time()
        self.sections: dict[str, float] = defaultdict(float)
        self.compile_in: dict[str, float] = defaultdict(float)
        self.programs: dict[str, float] = defaultdict(float)
        self.current: list[str] = []
        if not _LISTENING:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(_listener)
            _LISTENING.append(True)
        _ACTIVE.append(self)

    def add_compile(self, program: str, seconds: float) -> None:
        self.programs[program] += seconds
        if self.current:
            self.compile_in[self.current[-1]] += seconds

    @contextlib.contextmanager
    def section(self, name: str):
        """Time a section; a nested section's time is its own, not its parent's."""
        parent = self.current[-1] if self.current else None
        self.current.append(name)
        begin = time.time()
        try:
            yield
        finally:
            elapsed = time.time() - begin
            self.current.pop()
            self.sections[name] += elapsed
            if parent is not None:
                self.sections[parent] -= elapsed

    def close(self) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def summary(self) -> dict:
        """timings.json: wall (process start to now), import (process start to the run's start), every
        section's wall, compilation and execution (wall - compilation), the compiled programs, and what no
        section covers ('other')."""
        now = time.time()
        imports = self.start - process_start()
        sections = {name: {"wall": round(wall, 4), "compile": round(self.compile_in.get(name, 0.0), 4),
                           "execute": round(max(wall - self.compile_in.get(name, 0.0), 0.0), 4)}
                    for name, wall in self.sections.items()}
        covered = imports + sum(self.sections.values())
        total = now - process_start()
        return {"wall": round(total, 4), "import": round(imports, 4), "sections": sections,
                "compile_total": round(sum(self.programs.values()), 4),
                "programs": {k: round(v, 4) for k, v in sorted(self.programs.items(), key=lambda kv: -kv[1])},
                "other": round(total - covered, 4)}

    def write(self, path: str | os.PathLike) -> dict:
        summary = self.summary()
        tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, path)
        return summary


def section(name: str):
    """A section of the active recorder (a no-op outside a run)."""
    return _ACTIVE[-1].section(name) if _ACTIVE else contextlib.nullcontext()


def format_summary(summary: dict) -> str:
    """The breakdown as a few lines (what --timings prints)."""
    lines = [f"time: {summary['wall']:.1f} s in all: import {summary['import']:.1f} s, compile "
             f"{summary['compile_total']:.1f} s ({len(summary['programs'])} programs), other {summary['other']:.1f} s"]
    for name, s in sorted(summary["sections"].items(), key=lambda kv: -kv[1]["wall"]):
        lines.append(f"  {name:28s} {s['wall']:7.2f} s  (compile {s['compile']:.2f}, execute {s['execute']:.2f})")
    top = list(summary["programs"].items())[:8]
    lines.append("  slowest to compile: " + ", ".join(f"{k} {v:.2f} s" for k, v in top))
    return "\n".join(lines)
