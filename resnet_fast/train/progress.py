"""A dependency-free progress bar: batches done, loss, images/s (all processes) and the epoch's ETA.

On a terminal it redraws one line (at most 10 times a second); otherwise (a log file, CI) it prints a
line every `interval` seconds and at the end, so logs stay short. Only rank 0 draws one. The loss is
read (a device sync) only when a line is drawn.
"""

import sys
import time
from typing import Optional, TextIO

import torch


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True, stream: Optional[TextIO] = None,
                 interval: float = 30.0):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else interval
        self.done = self.images = 0
        self.start = self.last = time.perf_counter()

    def update(self, images: int, loss: torch.Tensor) -> None:
        self.done += 1
        self.images += images
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.done < self.total and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.done * (self.total - self.done)
        width = len(str(self.total))
        bar = "#" * (20 * self.done // self.total)
        line = (f"{self.label} [{bar:<20}] {self.done:>{width}}/{self.total} loss {float(loss):.4f} "
                f"{rate:,.0f} img/s ETA {_clock(eta)}")
        end = "\n" if (self.done == self.total or not self.tty) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
