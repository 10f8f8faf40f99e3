"""Make the README's dashboard screenshots: fit each family's synthetic config, then photograph TensorBoard.

Run: ``python examples/dashboard_docs.py [--families dual_stream siamese convgru] [--logs build/dashboards]``
(``make dashboard-screenshots``; about 10 minutes on 2 CPU cores). For each family it runs
``mslightning fit --config configs/<family>/synthetic.yaml`` with its logs under ``--logs``, then
``examples/dashboard_screenshots.py`` over the run, saving ``docs/dashboard/<family>/<tab>.png`` for Time
Series (filtered to the decision metrics), Custom Scalars, Text and HParams (3300 px wide: every
column), and the run's
``stream_report.html`` next to them as ``report.png``. It prints the tag census of each run
(``examples/tag_census.py``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAMILIES = {
    "dual_stream": ("dual_stream_synthetic", "^(streams/(overfit_score|update_ratio|grad_norm_ratio)|val/acc)$"),
    "siamese": ("siamese_synthetic", "^(streams/(update_ratio|grad_norm|rel_grad_norm)|val/pair_acc(_agreed)?)$"),
    "convgru": ("convgru_synthetic", "^(streams/(update_ratio|grad_norm)|val/(corr|bits_per_spike))$"),
}
"""Family -> (logger name in its config, the Time Series filter showing its decision metrics)."""


def main(argv: Sequence[str] | None = None) -> None:
    """Fit, photograph and count each family's dashboard.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--logs", type=Path, default=ROOT / "build" / "dashboards")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    parser.add_argument("--skip-fit", action="store_true", help="photograph the runs already under --logs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts, as modules
    import dashboard_screenshots as shots
    import tag_census as tags

    for family in args.families:
        name, time_series = FAMILIES[family]
        runs = args.logs / name
        if not args.skip_fit:
            shutil.rmtree(runs, ignore_errors=True)
            config = ROOT / "configs" / family / "synthetic.yaml"
            command = [sys.executable, "-m", "mslightning.cli", "fit", "--config", str(config)]
            command += ["--trainer.logger.init_args.save_dir", str(args.logs), "--trainer.enable_progress_bar", "false"]
            subprocess.run(command, check=True, cwd=ROOT)
        run = sorted(runs.glob("version_*"))[-1]
        out = args.out / family
        shots.capture_all(runs, out, tabs=("timeseries", "custom_scalars", "text"), filters={"timeseries": time_series})
        # HParams is one row of a dozen columns: wide enough for the named groups and the best metrics
        shots.capture_all(runs, out, tabs=("hparams",), width=3300, height=520)
        with shots.open_browser(1400, 1800) as driver:
            driver.get((run / "stream_report.html").resolve().as_uri())
            driver.save_screenshot(str(out / "report.png"))
        result = tags.census(run)
        copies = sum(len(group) - 1 for group in result.copies)
        print(
            f"{family}: {len(result.runs)} runs, {result.series} series, {result.tags} distinct tags, {copies} copies"
        )


if __name__ == "__main__":
    main()
