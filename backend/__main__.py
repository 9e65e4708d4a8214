"""The command line: ``terrafuse <job> [params]`` (or ``python -m backend``), one sub-command per job.

Prints the job's result as JSON on stdout, progress on stderr; a user error (and a failure the user
can fix: a full disk, a read-only folder, a missing file) exits 2 with one line, an internal error
exits 1 with its traceback. SIGTERM and SIGHUP stop a job as Ctrl-C does: its temporary outputs are
removed, its finished tiles stay in its resume store (:mod:`.raster.resume`), and the same command
resumes; it exits 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from . import __version__, jobs
from .errors import JobCancelled, UserError, user_message
from .progress import Progress
from .stop_signals import Stopped, install_stop_handlers
from .worker import run_job

_ARG_TYPES = {"int": int, "float": float}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terrafuse", description="Terrafuse backend jobs.")
    parser.add_argument("--version", action="version", version=f"terrafuse-backend {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for spec in jobs.JOBS.values():
        job_parser = sub.add_parser(spec.name, help=spec.title, description=spec.help)
        for param in spec.params:
            _add_argument(job_parser, param)
    return parser


def _add_argument(parser: argparse.ArgumentParser, param: jobs.Param) -> None:
    kwargs: dict[str, Any] = {"help": param.help}
    if param.kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
        kwargs["default"] = None if param.required else param.default
    else:
        kwargs["type"] = _ARG_TYPES.get(param.kind, str)
        if param.choices:
            kwargs["choices"] = param.choices
        if param.kind in ("raster", "vector", "file", "folder", "output_folder", "output_file"):
            kwargs["metavar"] = param.kind.upper().replace("OUTPUT_", "")
    if param.positional:
        parser.add_argument(param.name, **kwargs)
        return
    flag = "--" + param.name.replace("_", "-")
    if param.required:
        kwargs["required"] = True
    else:
        kwargs.setdefault("default", param.default)
        if param.default is not None and param.kind != "bool":
            kwargs["help"] += f" (default: {param.default})"
    parser.add_argument(flag, dest=param.name, **kwargs)


def _print_progress(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    install_stop_handlers()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    spec = jobs.get(args.job)
    raw = {p.name: getattr(args, p.name) for p in spec.params}
    progress = Progress(None if args.quiet else _print_progress, min_interval_s=1.0)
    out = _json_stream()
    try:
        result = run_job(spec.name, raw, progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, JobCancelled) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else int(signal.SIGINT)
        how = f"stopped by {signal.Signals(signum).name}" if isinstance(exc, Stopped) else "cancelled"
        print(f"{how}: nothing of this run is left in the output folder; the same command resumes from its "
              "finished tiles (--fresh starts again)", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        logging.getLogger("terrafuse").debug("failed", exc_info=True)
        print(f"error: {message}", file=sys.stderr)
        return 2
    for warning in (result.get("warnings") or []) if isinstance(result, dict) else []:
        print(f"warning: {warning}", file=sys.stderr)
    json.dump(result, out, indent=2)
    out.write("\n")
    out.flush()
    return 0


def _json_stream() -> Any:
    """Where the result goes: stdout, kept for it alone. Whatever a library prints from then on, from
    Python or from C (Ray's "A worker died" paragraph), goes to stderr: descriptor 1 now points there.
    Left as it is when stdout is not descriptor 1 (a test capturing it)."""
    try:
        if sys.stdout.fileno() != 1:
            return sys.stdout
    except (AttributeError, OSError, ValueError):
        return sys.stdout
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


if __name__ == "__main__":
    sys.exit(main())
