"""`bnlab santurkar2018`: Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help
Optimization?" (NeurIPS 2018), at CPU scale: noisy BN, internal covariate shift by their
Definition 2.1, the landscape along the gradient, and the learning-rate range; and claim C5b.

config.py (flags), nets.py (the networks, noisy BN), measure.py (the measurements, pure),
train.py (jobs, data, training of one chunk), analysis.py (records -> verdicts), report.py.
"""

from __future__ import annotations

from typing import Any

from bnlab.lab.experiments.protocol import Experiment, Log, RunResult, run_experiment
from bnlab.lab.experiments.santurkar2018.analysis import analyse, result_line
from bnlab.lab.experiments.santurkar2018.config import Config
from bnlab.lab.experiments.santurkar2018.report import report
from bnlab.lab.experiments.santurkar2018.train import Data, RunJob, load, plan, train

__all__ = ["EXPERIMENT", "Config", "Data", "RunJob", "run"]

EXPERIMENT: Experiment[Config] = Experiment(
    name="santurkar2018",
    summary="Santurkar et al. 2018: noisy BN, ICS (Def. 2.1), landscape, lr range; claim C5b",
    title="bnlab santurkar2018: does BN help by reducing internal covariate shift?",
    config=Config,
    load=load,
    plan=plan,
    train=train,
    analyse=analyse,
    report=report,
    result_line=result_line,
    quick={
        "seeds": (0, 1),
        "steps": 40,
        "measures": 3,
        "subset": 2000,
        "eval_size": 200,
        "test_size": 500,
        "dln_depth": 6,
        "sweep_lrs": (0.05, 1.0),
        "sweep_seeds": (0, 1),
        "sweep_steps": 20,
        "widths": (4, 8),
        "hidden": (32, 32),
        "checkpoint_every": 20,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
    threads=1,  # small GEMMs: two single-threaded jobs at once beat one two-threaded one
)


def run(cfg: Config, log: Log = print) -> RunResult:
    """Train every job, write the run directory; see :func:`run_experiment`."""
    result: Any = run_experiment(EXPERIMENT, cfg, log)
    return result
