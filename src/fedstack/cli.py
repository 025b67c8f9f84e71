"""The command line: `fedstack run | report | data`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .errors import FedstackError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except FedstackError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedstack", description="Federated learning: simulate, deploy, report.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a simulation (default: FedAvg on Fashion-MNIST)")
    run.add_argument("config", nargs="?", help="TOML config file (defaults apply to missing keys)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set server.rounds=5 (repeatable)")
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="print a run's summary and redraw its plots")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    data = sub.add_parser("data", help="say where a dataset is, or how to get it")
    data.add_argument("name", choices=["fashion_mnist", "digits"])
    data.add_argument("--path", default="", help="also look in this directory")
    data.add_argument("--download", action="store_true",
                      help="download Fashion-MNIST to ~/.cache/fedstack (checked by SHA-256)")
    data.set_defaults(func=cmd_data)
    return parser


def cmd_run(args) -> int:
    from rich.console import Console

    from .config import load_config
    from .experiment import default_run_dir, run_config
    from .report import print_summary

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.out) if args.out else default_run_dir()
    console = Console()
    progress = Progress(config.server.rounds, console, plain=args.quiet or not console.is_terminal)
    try:
        with progress:
            run_config(config, run_dir, on_round=[progress])
    except KeyboardInterrupt:
        print(f"interrupted: finished rounds are saved in {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_summary(run_dir, console)
    console.print(f"results in {run_dir}")
    return 0


def cmd_report(args) -> int:
    from .report import print_summary, write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FedstackError(f"run directory not found: {run_dir}")
    print_summary(run_dir)
    print(f"plot: {write_report(run_dir)}")
    return 0


def cmd_data(args) -> int:
    from .data import sources

    if args.name == "digits":
        print("digits ships with scikit-learn: nothing to install")
        return 0
    if args.download:
        print(f"downloaded to {sources.download_fashion_mnist()}")
        return 0
    found = sources.find_fashion_mnist(args.path)
    if found is None:
        sources.load_fashion_mnist(args.path)  # raises the error that says where it looked and what to run
    print(f"fashion_mnist: {found}")
    return 0


class Progress:
    """Per-round progress: a live bar on a terminal, one plain line per round otherwise."""

    def __init__(self, rounds: int, console, plain: bool):
        self.rounds, self.console, self.plain = rounds, console, plain
        self.started = time.perf_counter()
        self._bar = None

    def __enter__(self):
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("round"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("{task.fields[figures]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.rounds, figures="")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, record: dict, params=None) -> None:
        figures = ""
        if record.get("test_accuracy") is not None:
            figures = f"acc {record['test_accuracy']:.2%}  loss {record['test_loss']:.4f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=record["round"], figures=figures)
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / record["round"] * (self.rounds - record["round"])
        print(f"round {record['round']}/{self.rounds}  {figures}  clients {record['clients']}"
              f"  failures {record['failures']}  elapsed {elapsed:.1f}s  eta {eta:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
