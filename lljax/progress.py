"""The run's progress bar over weighted units of work: rich's bar on a terminal; off a terminal (a log file, CI)
one plain line every few seconds; nothing with `enabled=False` (--no-progress)."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path


class Progress:
    """`update(amount, message)` adds `amount` of `total` units of work done; `close()` ends the bar."""

    LINE_SECONDS = 5.0  # off a terminal: at most one line this often (and the last)

    def __init__(self, total: float, enabled: bool = True, stream=None, report_to: str | None = None):
        self.total, self.done, self.enabled = max(total, 1e-9), 0.0, enabled
        self.report_to, self.last_report = report_to, 0.0  # a worker's progress, read by its parent (jobs)
        self.stream = sys.stderr if stream is None else stream
        self.start, self.last_line = time.time(), 0.0
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import (BarColumn, Progress as RichProgress, TaskProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = RichProgress(BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.description}"), console=Console(file=self.stream),
                                    transient=False)
            self.task = self.bar.add_task("", total=self.total)
            self.bar.start()

    def update(self, amount: float, message: str) -> None:
        self.done += amount
        if self.report_to and (time.time() - self.last_report > 1.0 or self.done >= self.total):
            self._report()
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=min(self.done, self.total), description=message)
            return
        frac = min(self.done / self.total, 1.0)
        if time.time() - self.last_line > self.LINE_SECONDS or frac >= 1:
            elapsed = time.time() - self.start
            eta = elapsed / frac - elapsed if frac > 0.02 else float("nan")
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            eta_text = f"eta {eta:4.0f}s" if math.isfinite(eta) else "eta   ?"
            self.stream.write(f"[{bar}] {100 * frac:5.1f}% {elapsed:5.0f}s {eta_text}  {message}\n")
            self.stream.flush()
            self.last_line = time.time()

    def _report(self) -> None:
        import json
        import os

        path = Path(self.report_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"done": self.done, "total": self.total}))
        os.replace(tmp, path)
        self.last_report = time.time()

    def close(self) -> None:
        if self.report_to:
            self._report()
        if self.bar is not None:
            self.bar.stop()
