"""Quiet by default: third-party chatter off for the length of a command, vlaprune's own output untouched.

    with quiet():            # what `vlaprune COMMAND` runs under; `vlaprune --verbose COMMAND` skips it
        run(cfg)

Off: transformers' and datasets' logging below ERROR and their progress bars ("Loading weights", "Map:"),
huggingface_hub's bars, lerobot's and robosuite's log lines, Python warnings raised outside vlaprune, and
the bare `print`s of lerobot's policy constructors ("Reducing the number of VLM layers to 4 ..." once per
SmolVLA built). Each library's own switch is used where it has one; the prints have none, so stdout drops
exactly the lines that start with one of `CHATTER`. vlaprune's tqdm bars, rich tables and notes pass, and
everything is restored on exit (tests run many commands in one process).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

# The first characters of each bare print of lerobot 0.6's policy constructors and loaders
CHATTER = (
    "Reducing the number of VLM layers to ",  # SmolVLA, every construction
    "Loading  ",  # SmolVLA: "Loading  {model_id} weights ..."
    "Loading weights from local directory",
    "Loading model from: ",  # pi0 / pi0.5 from_pretrained
    "The PI0 model is a direct port",
    "The PI05 model is a direct port",
    "✓ Loaded state dict from",
    "Remapped ",
    "All keys loaded successfully!",
)
LOGGERS = ("lerobot", "robosuite_logs", "libero", "accelerate", "torchcodec")


class DropChatter:
    """A text stream that forwards everything to `stream` except writes starting with one of `prefixes`
    (and the newline `print` writes right after them). Nothing is buffered, so progress lines still flow."""

    def __init__(self, stream: TextIO, prefixes: tuple[str, ...] = CHATTER) -> None:
        self.stream, self.prefixes, self._eat_newline = stream, prefixes, False

    def write(self, text: str) -> int:
        eat, self._eat_newline = self._eat_newline, False
        if eat and text == "\n":
            return 1
        if text.startswith(self.prefixes):
            self._eat_newline = not text.endswith("\n")
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ... of the real stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence third-party output (see the module docstring) until the block ends."""
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tlog

    with contextlib.ExitStack() as undo, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(?!vlaprune)")  # raised outside vlaprune
        undo.callback(tlog.set_verbosity, tlog.get_verbosity())
        tlog.set_verbosity_error()
        if tlog.is_progress_bar_enabled():
            tlog.disable_progress_bar()
            undo.callback(tlog.enable_progress_bar)
        undo.callback(datasets.logging.set_verbosity, datasets.logging.get_verbosity())
        datasets.logging.set_verbosity_error()
        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            undo.callback(datasets.enable_progress_bars)
        if not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()
            undo.callback(hub.enable_progress_bars)
        for name in LOGGERS:  # robosuite logs through its own handler on import; lerobot through the root
            log = logging.getLogger(name)
            undo.callback(log.setLevel, log.level)
            log.setLevel(logging.ERROR)
        undo.enter_context(contextlib.redirect_stdout(DropChatter(sys.stdout)))
        yield
