"""Progress display without dependencies: a bar redrawn in place on a terminal (stderr), an
updating line in a Jupyter notebook (IPython's display, when running in one), nothing
otherwise; or a callable the caller gives (`progress=fn(done, total, text)`)."""

import sys
import time
from typing import Callable, Optional, Union

ProgressArg = Union[bool, Callable[[int, int, str], None], None]


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except Exception:
        return False


class Progress:
    """One progress display: `update(done, total, text)`, then `close()`."""

    def __init__(self, what: str, progress: ProgressArg = True):
        self.what = what
        self.fn: Optional[Callable[[int, int, str], None]] = None
        self.mode = "off"
        self.last = 0.0
        self.handle = None
        if callable(progress):
            self.fn = progress
            self.mode = "fn"
        elif progress:
            if _in_notebook():
                self.mode = "notebook"
            elif sys.stderr.isatty():
                self.mode = "tty"

    def _line(self, done: int, total: int, text: str) -> str:
        width = 30
        frac = (done / total) if total else 0.0
        bar = "#" * int(frac * width)
        return f"{self.what} [{bar:<{width}}] {frac * 100:5.1f}% {text}"

    def update(self, done: int, total: int, text: str = "", force: bool = False) -> None:
        if self.mode == "fn" and self.fn is not None:
            self.fn(done, total, text)
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        line = self._line(done, total, text)
        if self.mode == "tty":
            sys.stderr.write("\r" + line[:200] + "\033[K")
            sys.stderr.flush()
        elif self.mode == "notebook":
            from IPython.display import display  # type: ignore

            if self.handle is None:
                self.handle = display(line, display_id=True)
            else:
                self.handle.update(line)

    def close(self) -> None:
        if self.mode == "tty":
            sys.stderr.write("\n")
            sys.stderr.flush()
