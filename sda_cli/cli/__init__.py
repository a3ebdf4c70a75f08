"""The ``sda`` command line: one Typer app, a module per command. Each command parses its options, calls one library
function, writes and reports; the checks and the mathematics live in the library, whose messages it shows as they
are. :func:`main` turns every error into one line and an exit code."""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback

import typer

from sda_cli.checkpoint import CheckpointError, ModelChoiceError
from sda_cli.cli.app import app
from sda_cli.cli.common import UsageError, one_line, say, settings
from sda_cli.images import ImageError
from sda_cli.seeds import command_seed

__all__ = ["app", "command_seed", "main"]

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
COMMANDS = ("train", "noise", "denoise", "restore", "sample", "calibrate", "info")
"""The modules of the commands, each registering its own on :data:`app`, in the order ``sda --help`` lists them."""

for _module in COMMANDS:
    importlib.import_module(f"sda_cli.cli.{_module}")

# Typer raises click's exceptions (its own copy of click in recent versions): found from a public one.
_CLICK_ERROR = next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "ClickException")
_NO_ARGS_IS_HELP = getattr(sys.modules[_CLICK_ERROR.__module__], "NoArgsIsHelpError", ())


def main() -> None:
    """Entry point: one-line errors and an exit code (see README); ``--debug`` or ``SDA_DEBUG=1`` shows tracebacks.

    Exit codes: 0 success; 1 a file, checkpoint or data set could not be used; 2 a bad option value or usage;
    130 interrupted (Ctrl-C); 143 training stopped by SIGTERM (its checkpoint written).
    """
    args = sys.argv[1:]
    settings.debug = "--debug" in args or os.environ.get("SDA_DEBUG", "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    try:
        code = app(args=args, prog_name="sda", standalone_mode=False)
    except _NO_ARGS_IS_HELP as error:
        typer.echo(error.ctx.get_help() if error.ctx else str(error))
        code = EXIT_USAGE
    except _CLICK_ERROR as error:  # a bad option value, a missing argument, an unknown option
        _traceback(error)
        command = error.ctx.command_path if getattr(error, "ctx", None) else "sda"
        say(f"error: {one_line(error.format_message()).rstrip('.')}; see `{command} --help`")
        code = EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except Exception as error:
        _traceback(error)
        say(f"error: {_describe(error)}")
        code = EXIT_USAGE if isinstance(error, (UsageError, ModelChoiceError)) else 1
    if code == EXIT_INTERRUPTED:
        say("interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _traceback(error: BaseException) -> None:
    if settings.debug:
        traceback.print_exception(error)


def _describe(error: Exception) -> str:
    """A one-line message for an error that ends a command: what is wrong and what to do."""
    text = one_line(str(error))
    known: list[type[Exception]] = [UsageError, CheckpointError, ImageError]
    for module, name in (("sda_cli.data", "DataError"), ("sda_cli.train", "TrainingError")):
        if module in sys.modules:  # not imported: cannot have raised (and importing torchvision takes a second)
            known.append(getattr(sys.modules[module], name))
    if isinstance(error, tuple(known)):
        return text or type(error).__name__
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or text
        advice = "check the path, its permissions and the free disk space"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "free some disk space or write elsewhere; earlier files are kept"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = "choose a folder you can write to, or fix its permissions"
        elif error.errno in (errno.ENOTDIR, errno.EEXIST):
            reason, advice = "a parent of the path is a file, not a folder", "choose another path"
        elif error.errno == errno.ENOENT:
            advice = "check the path"
        return f"{where}{reason}; {advice}"
    if isinstance(error, MemoryError) or "memory" in text.lower():
        return f"not enough memory ({text or 'MemoryError'}); use a smaller --batch-size, smaller images or -n"
    if isinstance(error, ValueError) and text:
        return text
    return f"unexpected {type(error).__name__}: {text}; rerun with --debug for the traceback and report it"
