"""The training loop's progress display: a tqdm bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """``tqdm``: a bar per epoch; ``text``: a plain line every tenth of an epoch (and at least
    once a minute); ``none``: silent."""

    def __init__(self, mode: str, enabled: bool):
        if mode == "auto":
            mode = "tqdm" if sys.stderr.isatty() else "text"
        self.mode = mode if enabled else "none"
        self.bar = None

    def epoch(self, epoch: int, epochs: int, start: int, total: int) -> None:
        self.total, self.tag = total, f"epoch {epoch + 1}/{epochs}"
        self.every = max(1, total // 10)
        self.printed = time.monotonic()
        if self.mode == "tqdm":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=self.tag, leave=False,
                            dynamic_ncols=True)

    def step(self, i: int, loss: float, lr: float) -> None:
        if self.mode == "tqdm":
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", refresh=False)
        elif self.mode == "text" and (i % self.every == 0 or i == self.total
                                      or time.monotonic() - self.printed > 60):
            self.printed = time.monotonic()
            print(f"{self.tag} step {i}/{self.total} loss {loss:.4f} lr {lr:.3g}", flush=True)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "none":
            print(text, flush=True)
