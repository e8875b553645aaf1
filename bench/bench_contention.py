"""`bnlab gan` on a machine shared with other work: alone, two at once, beside a busy process.

A run should degrade to its fair share when it shares the cores, not collapse. For each case
(one job; two jobs in two worker processes; one job data-parallel on two ranks) this runs, in
one session so that the machine's speed is the same for all:

  1. the run alone;
  2. two identical runs at the same time;
  3. the run beside one busy-loop process (a core's worth of someone else's work);

and prints each run's training speed (images/s: the median over its epochs after the first,
averaged over its jobs) and the ratio to the same case alone. A fair share of two runs on the
same cores is 50%; the bar is 40%. The one-job case is also run with ``--threads <cores>`` (the
default before the thread budget: all cores in one process, fixed) as the "before" row, so the
fix is measured against what it replaced in the same session; a last line compares the two
alone over interleaved rounds (the price of adapting, if any).

    python bench/bench_contention.py            # about 10 minutes on a 2-core machine
    python bench/bench_contention.py --quick    # a smoke run

Set BNLAB_DATA to the data root (e.g. ../shared/data). Never run it beside another benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOUND = 0.40  # each concurrent run keeps at least this share of its alone speed

CASES = {
    "one job": ["--variants", "init"],
    "two jobs (--jobs 2)": ["--variants", "init,init-bn", "--jobs", "2"],
    "data-parallel (--nproc 2)": ["--variants", "init", "--nproc", "2"],
}
BEFORE = "one job, all cores (before)"  # + ["--threads", cores]: the old one-job default


def _command(case: list[str], out: Path, epochs: int, subset: int) -> list[str]:
    bnlab = str(Path(sys.executable).with_name("bnlab"))
    budget = ["--epochs", str(epochs), "--subset", str(subset), "--no-metrics"]
    return [bnlab, "gan", *case, *budget, "--sample-every", "100000", "--out", str(out)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # bnlab's default
    return env


def _speed(out: Path) -> float:
    """Mean over jobs of the median images/s over epochs after the first."""
    by_job: dict[str, list[float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "images_per_s" in r and r["epoch"] >= 2:
            by_job.setdefault(f"{r['seed']}/{r['variant']}", []).append(r["images_per_s"])
    if not by_job:
        raise RuntimeError(f"{out}: no epochs after the first were recorded")
    return statistics.mean(statistics.median(v) for v in by_job.values())


def _run_together(cmds: list[list[str]], outs: list[Path]) -> list[float]:
    procs = [
        subprocess.Popen(c, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in cmds
    ]
    for p, c in zip(procs, cmds, strict=True):
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(c)} exited {p.returncode}: {err.decode()[-2000:]}")
    return [_speed(o) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the alone ratio")
    ap.add_argument("--quick", action="store_true", help="2 epochs of 1,000 images: smoke run")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.subset = 2, 1000
    if not os.environ.get("BNLAB_DATA"):
        sys.exit("set BNLAB_DATA to the directory with mnist/ (e.g. ../shared/data)")
    cores = len(os.sched_getaffinity(0))
    print(f"bnlab gan, {args.epochs} epochs of {args.subset} MNIST images, {cores} cores")
    rows = []
    cases = {**CASES, BEFORE: ["--variants", "init", "--threads", str(cores)]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k, (name, case) in enumerate(cases.items()):
            outs = [root / f"{k}-{i}" for i in range(4)]
            alone = _run_together([_command(case, outs[0], args.epochs, args.subset)], outs[:1])[0]
            pair = _run_together(
                [_command(case, o, args.epochs, args.subset) for o in outs[1:3]], outs[1:3]
            )
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.5)
                beside = _run_together(
                    [_command(case, outs[3], args.epochs, args.subset)], outs[3:]
                )[0]
            finally:
                busy.kill()
                busy.wait()
            rows.append((name, alone, pair, beside))
            print(f"  measured {name}", flush=True)
    head = f"{'case':<32} {'alone':>8} {'two at once (each)':>20} {'share':>6} "
    head += f"{'beside busy':>12} {'share':>6}"
    print(head + "\n" + "-" * len(head))
    for name, alone, pair, beside in rows:
        share = min(pair) / alone
        print(
            f"{name:<32} {alone:>8.0f} {pair[0]:>9.0f} {pair[1]:>9.0f}  {share:>5.0%} "
            f"{beside:>12.0f} {beside / alone:>6.0%}"
        )
    print(
        f"images/s of training (median over epochs after the first); share = the concurrent "
        f"run's speed / alone (fair: 50%, bar: {BOUND:.0%})."
    )
    # The price alone, if any: the default and the old all-cores setting, rounds interleaved
    # (the table's alone runs are minutes apart, and the machine drifts).
    speeds: dict[str, list[float]] = {"one job": [], BEFORE: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, name in enumerate(speeds):
                out = Path(tmp) / f"alone-{r}-{k}"
                cmd = _command(cases[name], out, args.epochs, args.subset)
                speeds[name] += _run_together([cmd], [out])
    mine, before = (statistics.median(v) for v in speeds.values())
    print(
        f"alone, one job, {args.rounds} interleaved rounds: default {mine:.0f}, all {cores} "
        f"cores (before) {before:.0f} images/s; ratio {mine / before:.2f}"
    )


if __name__ == "__main__":
    main()
