"""Count what a TensorBoard log directory shows: runs, tags, series, and series that are copies of another.

Run: ``python examples/tag_census.py LOGDIR [--show-copies]``. Every directory under ``LOGDIR`` holding
event files is a run (as TensorBoard sees it). A *series* is one (run, scalar tag); a series is a *copy*
when another series has exactly the same values at the same steps (two tags drawing one curve), constant
series (a threshold line, a count that stays 0) left out, since those agree by coincidence.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@dataclass
class Census:
    """What a log directory shows.

    Attributes:
        runs: Run (relative path) -> its scalar tags.
        copies: Groups of series (``"run: tag"``) with identical values at identical steps.
    """

    runs: dict[str, list[str]]
    copies: list[list[str]]

    @property
    def series(self) -> int:
        """Number of (run, tag) series."""
        return sum(len(tags) for tags in self.runs.values())

    @property
    def tags(self) -> int:
        """Number of distinct tag names (what Time Series shows as cards)."""
        return len({tag for tags in self.runs.values() for tag in tags})


def census(logdir: str | Path) -> Census:
    """Read every run under ``logdir`` and find the series that are copies of another.

    Args:
        logdir: A TensorBoard log directory.

    Returns:
        The census.
    """
    root = Path(logdir)
    runs: dict[str, list[str]] = {}
    by_values: dict[tuple, list[str]] = defaultdict(list)
    for directory in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        run = str(directory.relative_to(root))
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        acc.Reload()
        runs[run] = sorted(acc.Tags()["scalars"])
        for tag in runs[run]:
            points = tuple((e.step, e.value) for e in acc.Scalars(tag))
            if len({value for _, value in points}) > 1:
                by_values[points].append(f"{run}: {tag}")
    return Census(runs, [names for names in by_values.values() if len(names) > 1])


def main(argv: Sequence[str] | None = None) -> None:
    """Print the census of a log directory.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--show-copies", action="store_true", help="list the groups of copied series")
    args = parser.parse_args(argv)
    result = census(args.logdir)
    for run, tags in result.runs.items():
        print(f"{run or '.'}: {len(tags)} scalar tags")
    copies = sum(len(group) - 1 for group in result.copies)
    print(f"{len(result.runs)} runs, {result.series} series, {result.tags} distinct tags, {copies} copies")
    if args.show_copies:
        for group in result.copies:
            print("  same curve: " + ", ".join(group))


if __name__ == "__main__":
    main()
