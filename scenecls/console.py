"""What a person sees in the terminal, and the full log in ``<workdir>/log.txt``.

By default the console shows progress bars (tqdm, on a terminal only), short summaries (``say``) and
warnings. Everything else (INFO logs, TensorFlow's, tfds' and XLA's own output, Python warnings) goes to
``<workdir>/log.txt``; ``--verbosity=1`` shows it on the console too. Piped output (CI, files) gets no bars,
so it holds no redraw noise, only the summary lines.
"""

import contextlib
import logging as std_logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from absl import logging
from tqdm import tqdm

LOG_NAME = "log.txt"
T = TypeVar("T")
_SAID = "scenecls_said"  # LogRecord attribute of lines already printed by say()
_CONSOLE_FORMAT = "%(levelname)s: %(message)s"
_FALLBACK_SIZE = (100, 24)  # columns, lines


def progress(
    iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", unit: str = "it", **kwargs
) -> "tqdm[T]":
    """A progress bar on stderr, drawn only when stderr is a terminal (and on process 0 of a run).

    Use it as tqdm: iterate over it, or ``update`` it; ``set_postfix`` adds live figures.
    """
    shown = _primary() and sys.stderr.isatty()
    sized = shown and _terminal_columns() > 0  # a pty may report a 0x0 size: then a fixed one
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not shown,
        dynamic_ncols=sized,
        ncols=None if sized else _FALLBACK_SIZE[0],
        nrows=None if sized else _FALLBACK_SIZE[1],
        mininterval=0.25,
        **kwargs,
    )


def say(text: str, error: bool = False) -> None:
    """A user-facing line (or lines) on stdout (stderr if ``error``), and in the log file.

    Written around any open progress bar, so the bar is not broken up.
    """
    if _primary():
        tqdm.write(text, file=sys.stderr if error else sys.stdout)
        sys.stdout.flush()
    logging.log(logging.ERROR if error else logging.INFO, "%s", text, extra={_SAID: True})


@contextlib.contextmanager
def session(workdir: str, verbosity: int, log_name: str = LOG_NAME) -> Iterator[None]:
    """The CLI's console for one command: logs to ``<workdir>/<log_name>``, a quiet terminal by default.

    With ``verbosity`` <= 0 the terminal shows warnings and errors (one short line each), ``say`` lines and
    progress bars; native libraries' output (TensorFlow's C++ logs, XLA) is sent to the log file by
    pointing file descriptor 2 there while Python's ``sys.stderr`` keeps the terminal. With ``verbosity`` >=
    1 the terminal gets everything, in absl's format.
    """
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, log_name)
    file_handler = std_logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.PythonFormatter())
    root = std_logging.getLogger()
    root.addHandler(file_handler)
    std_logging.captureWarnings(True)
    absl_handler = logging.get_absl_handler()
    quiet = verbosity <= 0
    console_filter = _ConsoleFilter(quiet)
    absl_handler.addFilter(console_filter)
    absl_formatter = absl_handler.python_handler.formatter
    terminal = None
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        absl_handler.setFormatter(std_logging.Formatter(_CONSOLE_FORMAT))
        terminal = _Terminal(log_path)
        absl_handler.python_handler.stream = sys.stderr
    logging.info("scenecls %s (log: %s)", " ".join(sys.argv[1:]), log_path)
    try:
        yield
    finally:
        if terminal:
            terminal.restore()
            absl_handler.python_handler.stream = sys.stderr
            absl_handler.setFormatter(absl_formatter)
        absl_handler.removeFilter(console_filter)
        root.removeHandler(file_handler)
        file_handler.close()


class _ConsoleFilter(std_logging.Filter):
    """Drops from the console what ``say`` already printed, and when quiet, INFO and Python warnings."""

    def __init__(self, quiet: bool):
        super().__init__()
        self.quiet = quiet

    def filter(self, record: std_logging.LogRecord) -> bool:
        if getattr(record, _SAID, False):
            return False
        if self.quiet:
            return record.levelno >= std_logging.WARNING and record.name != "py.warnings"
        return True


class _Terminal:
    """Python's stderr on the terminal while file descriptor 2 (native code's stderr) goes to a file."""

    def __init__(self, log_path: str):
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._saved_stderr = sys.stderr
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.stderr = open(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")

    def restore(self) -> None:
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        sys.stderr.close()
        sys.stderr = self._saved_stderr


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def _primary() -> bool:
    """Whether this is process 0 (the one that talks to the user); True before JAX is imported."""
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0
