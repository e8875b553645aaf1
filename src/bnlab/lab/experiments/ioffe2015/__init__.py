"""`bnlab ioffe2015`: Ioffe & Szegedy 2015, section 4.1 and Figure 1, on MNIST.

"Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift"
(ICML 2015), section 4.1: an MLP with 3 fully connected hidden layers of 100 sigmoid units,
weights initialized to small random Gaussian values, a 10-way softmax, trained on MNIST with
batches of 60, once plain and once with BN after every hidden layer (before the sigmoid).
Figure 1 shows (a) test accuracy against training steps for both nets, and (b, c) the
{15, 50, 85}th percentiles of the input of one sigmoid of the last hidden layer over training:
the baseline's distribution drifts, the BN net's stays put.

What the paper does not give, chosen here and written into the report: the optimizer (plain
SGD, the paper's era default), its learning rate, the init std, and which sigmoid is plotted.
The paper trains 50,000 steps; the default here is 20,000 (see ``Ioffe2015Config.steps``).

config.py (flags), train.py (jobs, data, one net's training and evaluation), analysis.py
(records -> verdicts), report.py (run directory -> Figure 1 and tables).
"""

from __future__ import annotations

from typing import Any

from bnlab.lab.experiments.ioffe2015.analysis import analyse, claims, result_line
from bnlab.lab.experiments.ioffe2015.config import NETS, Ioffe2015Config
from bnlab.lab.experiments.ioffe2015.report import report
from bnlab.lab.experiments.ioffe2015.train import (
    CHUNK_STEPS,
    IoffeData,
    NetJob,
    build_net,
    eval_steps,
    evaluate,
    last_sigmoid_input,
    load,
    plan,
    train_net,
)
from bnlab.lab.experiments.protocol import Experiment, Log, RunResult, run_experiment

__all__ = [
    "EXPERIMENT",
    "NETS",
    "Ioffe2015Config",
    "IoffeData",
    "NetJob",
    "build_net",
    "claims",
    "eval_steps",
    "evaluate",
    "last_sigmoid_input",
    "run",
]

EXPERIMENT: Experiment[Ioffe2015Config] = Experiment(
    name="ioffe2015",
    summary="Ioffe & Szegedy 2015 Figure 1: sigmoid MLP with/without BN, accuracy and percentiles",
    title="bnlab ioffe2015: Ioffe & Szegedy 2015, Figure 1",
    config=Ioffe2015Config,
    load=load,
    plan=plan,
    train=train_net,
    analyse=analyse,
    report=report,
    result_line=result_line,
    quick={"steps": 1500, "eval_every": 100, "test_size": 500},
    chunk_size=lambda cfg: CHUNK_STEPS,
    threads=1,  # a tiny net dominated by per-op overhead: one single-threaded process per core
)


def run(cfg: Ioffe2015Config, log: Log = print) -> RunResult:
    """Train both nets of every seed, write the run directory; see
    :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    result: Any = run_experiment(EXPERIMENT, cfg, log)
    return result
