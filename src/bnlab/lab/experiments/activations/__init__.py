"""`bnlab activations`: per-layer activation distributions of a deep MLP, by init and with BN.

The blog's explanation of internal covariate shift (claim C5): as inputs pass through layer
after layer, the distribution of activations is distorted more and more; Xavier / He init keep
the per-layer distributions similar and Gaussian-like at the start, and BN forces it during
training. The picture the post cites is the Stanford CS231n lecture figure (Lecture 6,
"Training Neural Networks I", weight initialization): a row of per-layer histograms of a
10-layer, 500-unit tanh net for several inits (Glorot & Bengio 2010, He et al. 2015). This
experiment draws that figure for real MNIST digits, with and without BN (Ioffe & Szegedy 2015)
after every Linear layer, at init and after a few hundred training steps, and puts numbers on
it: per layer mean, std, percentiles, skewness, kurtosis and Kolmogorov-Smirnov distances to
N(0, 1).

config.py (flags), train.py (jobs, data, one net's training), measure.py (layer statistics),
analysis.py (records -> C5), report.py (run directory -> figures and sections).
"""

from __future__ import annotations

from typing import Any

from bnlab.lab.experiments.activations.analysis import analyse, claims, result_line
from bnlab.lab.experiments.activations.config import ActivationsConfig
from bnlab.lab.experiments.activations.measure import layer_stats, record_layers
from bnlab.lab.experiments.activations.report import report
from bnlab.lab.experiments.activations.train import (
    ActivationsData,
    NetJob,
    build_net,
    load,
    plan,
    train_net,
)
from bnlab.lab.experiments.protocol import Experiment, Log, RunResult, run_experiment

__all__ = [
    "EXPERIMENT",
    "ActivationsConfig",
    "ActivationsData",
    "NetJob",
    "build_net",
    "claims",
    "layer_stats",
    "record_layers",
    "run",
]

EXPERIMENT: Experiment[ActivationsConfig] = Experiment(
    name="activations",
    summary="per-layer activation histograms by init, with and without BN (C5a, the CS231n figure)",
    title="bnlab activations: seeing covariate shift",
    config=ActivationsConfig,
    load=load,
    plan=plan,
    train=train_net,
    analyse=analyse,
    report=report,
    result_line=result_line,
    quick={"depth": 6, "width": 100, "steps": 60, "eval_size": 300, "inits": ("small", "he")},
    threads=1,  # small GEMMs: one single-threaded process per core beats threads
)


def run(cfg: ActivationsConfig, log: Log = print) -> RunResult:
    """Measure and train every (activation, init, norm) net, write the run directory; see
    :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    result: Any = run_experiment(EXPERIMENT, cfg, log)
    return result
