"""`bnlab running-stats`' report: the estimators' table, statistic errors and accuracy over
training, and one channel's trace, drawn from the run (its analysis and records); never
trains."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.experiments.running_stats.analysis import (
    RunningStatsAnalysis,
    analyse,
    curves,
    result_line,
)
from bnlab.lab.experiments.running_stats.config import (
    CUMULATIVE,
    POPULATION,
    PRECISE,
    TRACE_CHANNEL,
    Config,
    ema_name,
    estimator_names,
)
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.results import Run
from bnlab.lab.stats import format_ci

__all__ = ["REPORT", "make_figures", "report"]


# ---- figures ------------------------------------------------------------------------------------


def make_figures(run: Run[Config]) -> dict[str, bytes]:
    """stat_errors.png, accuracy.png and trace.png (with a trace) from the run's records,
    written into the run directory; name -> PNG bytes of those drawn."""
    from bnlab.lab.report.plots import pyplot

    plt = pyplot()

    from bnlab.lab.report.plots import save_figure

    run_dir, records = run.dir, run.records
    drawn: dict[str, bytes] = {}
    if not any(r.get("kind") == "epoch" for r in records):
        return drawn
    names = [n for n in estimator_names(run.config.training) if n != POPULATION]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "mean_err", "|mean - population mean| / population std"),
        (axes[1], "var_err", "|var - population var| / population var"),
    ):
        by_name = curves(records, key, lambda v: float(np.mean(v)))
        for name in names:
            if name in by_name:
                ep, val = by_name[name]
                ax.plot(ep, val, marker="o", ms=3, lw=1.4, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("epoch (estimate after it)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("Error of the mean (avg over layers, channels, seeds)")
    axes[1].set_title("Error of the variance")
    axes[1].legend(fontsize=8)
    drawn["stat_errors.png"] = save_figure(fig, run_dir / "stat_errors.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    acc = curves(records, "test_acc", lambda v: 100 * float(v))
    for name in [*names, POPULATION]:
        if name in acc:
            ep, val = acc[name]
            ax.plot(
                ep,
                val,
                marker="o",
                ms=3,
                lw=1.4,
                label=name,
                ls="--" if name == POPULATION else "-",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%), eval mode")
    ax.set_title("Accuracy with each estimate loaded (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    drawn["accuracy.png"] = save_figure(fig, run_dir / "accuracy.png")

    traces = [r for r in records if r.get("kind") == "trace"]
    if not traces:
        return drawn
    seed = traces[0]["seed"]
    traces = sorted((r for r in traces if r["seed"] == seed), key=lambda r: r["step"])
    layer = len(traces[0]["batch_mean"]) - 1  # the deepest BN layer: the most drift
    ends = [r for r in records if r.get("kind") == "epoch" and r["seed"] == seed]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    steps = np.array([r["step"] for r in traces])
    for ax, what, label in ((axes[0], "mean", "mean"), (axes[1], "var", "variance")):
        ax.plot(
            steps,
            [r[f"batch_{what}"][layer] for r in traces],
            ".",
            ms=1.5,
            color="0.7",
            label="batch statistic",
        )
        for k, name in enumerate(traces[0][what]):
            ax.plot(
                steps, [r[what][name][layer] for r in traces], lw=1.2, color=f"C{k}", label=name
            )
        pop = sorted((r for r in ends if r["estimator"] == POPULATION), key=lambda r: r["step"])
        ax.plot(
            [r["step"] for r in pop],
            [r[f"channel_{what}"][layer] for r in pop],
            "kx",
            ms=7,
            mew=1.8,
            label="population (weights at epoch end)",
        )
        ax.set_ylabel(f"channel {TRACE_CHANNEL} {label}")
        ax.grid(alpha=0.3)
    axes[0].set_title(
        f"BN layer {layer + 1}, channel {TRACE_CHANNEL}, seed {seed}: running "
        "estimates over training"
    )
    axes[1].set_xlabel("training step")
    axes[0].legend(fontsize=8, ncol=3)
    drawn["trace.png"] = save_figure(fig, run_dir / "trace.png")
    return drawn


# ---- the section --------------------------------------------------------------------------------


def _layers(values: Sequence[float], pct: bool = False) -> str:
    return " / ".join(f"{100 * v:.2f}%" if pct else f"{v:.4f}" for v in values)


def report(run: Run[Config], a: RunningStatsAnalysis) -> list[Section]:
    """The report's sections, from the run alone (never trains)."""
    t = run.config.training
    pngs = make_figures(run)
    est = a.estimators
    rows = []
    for name, e in est.items():
        d = e.acc_vs_population
        delta = "-" if name == POPULATION or d is None else format_ci(d.diff, "{:+.2f}")
        rows.append(
            [
                name,
                format_ci(e.test_acc, "{:.2f}", "%"),
                delta,
                _layers(e.mean_err),
                _layers(e.var_err, True),
            ]
        )
    n_layers = len(t.hidden)
    table = Table(
        f"Estimators after {a.epoch} epochs (mean over {len(a.seeds)} seeds)",
        [
            "estimator",
            "held-out acc [95% CI]",
            "minus population (pp) [95% CI]",
            f"mean error, layers 1..{n_layers}",
            f"variance error, layers 1..{n_layers}",
        ],
        rows,
        "mean error = |mean - population mean| / population std, variance error = |var - "
        "population var| / population var, each averaged over a layer's channels; population "
        "= statistics of each BN layer's input over the whole training set with the final "
        "weights (by definition error 0). Accuracy differences paired over seeds (Student t).",
    )
    ema = ema_name(t.momentum)
    finding = ""
    if all(k in est for k in (ema, CUMULATIVE, PRECISE, POPULATION)):
        finding = (
            "\n\nAfter the last epoch, averaged over layers: variance error "
            f"{100 * np.mean(est[ema].var_err):.2f}% ({ema}), "
            f"{100 * np.mean(est[CUMULATIVE].var_err):.2f}% (cumulative), "
            f"{100 * np.mean(est[PRECISE].var_err):.2f}% (precise); held-out accuracy "
            f"{est[ema].test_acc.mean:.2f}%, {est[CUMULATIVE].test_acc.mean:.2f}%, "
            f"{est[PRECISE].test_acc.mean:.2f}% "
            f"(population {est[POPULATION].test_acc.mean:.2f}%)."
        )
    trend = ""
    if len(a.cumulative_var_err) > 1:
        (first, err_first), (last, err_last) = a.cumulative_var_err[0], a.cumulative_var_err[-1]
        trend = (
            f" The cumulative average's variance error was {100 * err_first:.1f}% after epoch "
            f"{first} and {100 * err_last:.1f}% after epoch {last}."
        )
    pb = t.precise_batch_size or t.batch_size
    digits = run.meta.get("train_digits")
    intro = (
        f"Setup: {run.data}; "
        f"{f'{digits:,}' if isinstance(digits, int) else '?'} training digits. MLP "
        f"784-{'-'.join(map(str, t.hidden))}-10, {t.activation} units, BN "
        f"(momentum {t.momentum:g}) after each hidden Linear; Adam lr {t.lr:g}, "
        f"batch {t.batch_size}, {t.epochs} epochs, seeds "
        f"{', '.join(map(str, a.seeds))}.\n\n"
        f"Estimators, all from the same training run: {ema} = the model's own running "
        "statistics; other ema-m = shadow BN layers with momentum m fed the same BN inputs; "
        "cumulative = shadow layers with momentum=None (the plain average of every batch "
        "statistic since the start, which the blog describes); precise = recomputed after "
        f"training with the final weights, one pass over the training set in batches of {pb} "
        "(fvcore precise BN / torch.optim.swa_utils.update_bn). Each epoch's numbers are what "
        "one would get had training stopped there, so the curves also show how each "
        "estimator depends on the training length.\n\n"
        "What to look for: the cumulative average keeps statistics of early weights, so its "
        "error is a bias that shrinks only as the early batches' share falls and the weights "
        "settle; the EMA follows the weights but averages few batches, so its error is noise "
        "that a smaller momentum trades for staleness (and, early on, for its initial values "
        "0 and 1). Precise is exact in the first BN layer up to averaging per-batch "
        "variances; deeper layers keep a small error because during its pass the earlier BN "
        "layers normalize with batch statistics, not population ones." + finding + trend
    )
    figures = [
        Figure(title, pngs[name], caption)
        for name, title, caption in (
            (
                "stat_errors.png",
                "Statistic errors over training",
                "each estimator against the population statistics of the weights at that "
                "epoch end.",
            ),
            ("accuracy.png", "Held-out accuracy per estimator", "eval mode, mean over seeds."),
            (
                "trace.png",
                "Running estimates of one channel",
                "grey: each batch's statistic; lines: running estimates after each step; x: the "
                "population statistic at each epoch end. The cumulative line lags behind, "
                "weighted towards early weights.",
            ),
        )
        if name in pngs
    ]
    return [
        Section(
            "Eval-mode statistics: EMA, cumulative average, precise",
            intro,
            tables=[table],
            figures=figures,
            anchor="running-stats",
        )
    ]


REPORT: ExperimentReport[Config, RunningStatsAnalysis] = ExperimentReport(
    name="running-stats",
    title="bnlab running-stats: which statistics should eval mode use?",
    config=Config,
    analyse=analyse,
    report=report,
    result_line=result_line,
)
