"""`bnlab gan-ablation` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.ablation`.
"""

from __future__ import annotations

from bnlab.lab.experiments.ablation.analysis import effects
from bnlab.lab.experiments.ablation.config import NOTEBOOK2, NOTEBOOK3, AblationConfig, Cell, design
from bnlab.lab.experiments.ablation.report import REPORT
from bnlab.lab.experiments.common import resolve_device
from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.gan.train import GanData, GanJob, load_gan_data, train_chunk
from bnlab.lab.experiments.protocol import Experiment, Loaded, Log

__all__ = [
    "EXPERIMENT",
    "NOTEBOOK2",
    "NOTEBOOK3",
    "AblationConfig",
    "Cell",
    "design",
    "effects",
    "run",
]


def load(cfg: AblationConfig, log: Log) -> Loaded:
    training = cfg.cell_training()
    data = load_gan_data(
        cfg.dataset,
        cfg.data,
        "any",
        cfg.subset,
        training.batch_size,
        training.metrics,
        cfg.classifier_steps,
        resolve_device("auto"),
        log,
    )
    cells = design(cfg.cells)
    log(f"{len(cells)} cells x {len(cfg.seeds)} seed(s), {cfg.epochs} epochs on {data.description}")
    return Loaded(data, {"data": data.description})


def plan(cfg: AblationConfig, data: GanData) -> list[GanJob]:
    training, device = cfg.cell_training(), str(resolve_device("auto"))
    steps = data.images.shape[0] // training.batch_size
    return [
        GanJob(cell.variant(), seed, training, device, seed == cfg.seeds[0], steps)
        for seed in cfg.seeds
        for cell in design(cfg.cells)
    ]


EXPERIMENT: Experiment[AblationConfig] = Experiment(
    reading=REPORT,
    summary="which of notebook 2's differences broke its BN GAN: factorial design",
    load=load,
    plan=plan,
    train=train_chunk,
    quick={
        "seeds": (0, 1),
        "epochs": 1,
        "subset": 500,
        "metric_samples": 300,
        "classifier_steps": 150,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
)


def run(cfg: AblationConfig, log: Log = print) -> RunResult:
    return run_experiment(EXPERIMENT, cfg, log)
