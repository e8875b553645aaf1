"""Every ``bnlab <experiment>``, in one place: the CLI reads this. (``bnlab report`` reads
:mod:`bnlab.lab.experiments.reports`, which holds only the reading halves.)"""

from __future__ import annotations

from typing import Any

from bnlab.lab.experiments.ablation.experiment import EXPERIMENT as ABLATION
from bnlab.lab.experiments.activations.experiment import EXPERIMENT as ACTIVATIONS
from bnlab.lab.experiments.batch_size.experiment import EXPERIMENT as BATCH_SIZE
from bnlab.lab.experiments.gan.experiment import EXPERIMENT as GAN
from bnlab.lab.experiments.gan_norms.experiment import EXPERIMENT as GAN_NORMS
from bnlab.lab.experiments.ioffe2015.experiment import EXPERIMENT as IOFFE2015
from bnlab.lab.experiments.protocol import Experiment
from bnlab.lab.experiments.regularization.experiment import EXPERIMENT as REGULARIZATION
from bnlab.lab.experiments.running_stats.experiment import EXPERIMENT as RUNNING_STATS
from bnlab.lab.experiments.santurkar2018.experiment import EXPERIMENT as SANTURKAR2018

__all__ = ["EXPERIMENTS"]

EXPERIMENTS: dict[str, Experiment[Any]] = {
    e.name: e
    for e in (
        GAN,
        ABLATION,
        GAN_NORMS,
        ACTIVATIONS,
        IOFFE2015,
        SANTURKAR2018,
        REGULARIZATION,
        RUNNING_STATS,
        BATCH_SIZE,
    )
}
