"""What the full-scale lab costs, and how long it takes on 1, 8 and 64 nodes of 2 cores.

Measures, on this machine, one single-threaded GAN job (the unit a runner schedules: one
(seed, variant), one core): seconds per training step and per scoring of the samples. From
those it prices the full-scale versions of the lab's GAN experiments (the 60,000-image train
split, the blog's 200 epochs, 5 seeds) and their wall time on a cluster of N two-core nodes:
every job's chunks run one after another, different jobs in parallel, so the wall time is the
larger of one job's time and the total cut into rounds of 2N chunks.

    python bench/cluster_cost.py            # ~2 minutes
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bnlab.lab.data import to_unit_range
from bnlab.lab.experiments.gan.experiment import GanTrainer, GanTraining
from bnlab.lab.experiments.gan.train import load_gan_data, score_samples
from bnlab.lab.models.gan import BLOG_VARIANTS

FULL_IMAGES = 60_000
BATCH = 100
EPOCHS = 200
SEEDS = 5
CHUNK_EPOCHS = 5  # --checkpoint-every: the unit a job moves between workers in


def measure(steps: int, metric_samples: int) -> tuple[float, float]:
    """(seconds per training step, seconds per scoring in both G modes), one thread."""
    torch.set_num_threads(1)
    data = load_gan_data(
        "mnist", None, "any", 0, BATCH, True, 1000, torch.device("cpu"), lambda _m: None
    )
    cfg = GanTraining(metric_samples=metric_samples, sample_mode="both")
    trainer = GanTrainer(BLOG_VARIANTS["init-bn"], cfg, 0, data.images, torch.device("cpu"))
    order, z = trainer.begin_epoch(0)
    n = min(steps, trainer.steps_per_epoch)
    for i in range(5):  # warm-up
        trainer.step(to_unit_range(data.images[order[i]]), z[i, 0], z[i, 1])
    t0 = time.perf_counter()
    for i in range(n):
        trainer.step(to_unit_range(data.images[order[i]]), z[i, 0], z[i, 1])
    per_step = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    score_samples(trainer, data.evaluator, 0)
    per_score = time.perf_counter() - t0
    return per_step, per_score


def wall_hours(jobs: int, job_s: float, nodes: int) -> float:
    chunks = jobs * math.ceil(EPOCHS / CHUNK_EPOCHS)
    chunk_s = job_s / math.ceil(EPOCHS / CHUNK_EPOCHS)
    rounds = math.ceil(chunks / (2 * nodes))
    return max(job_s, rounds * chunk_s) / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps to time")
    args = parser.parse_args()
    step_s, score10k_s = measure(args.steps, 10_000)
    _, score5k_s = measure(5, 5_000)
    steps = FULL_IMAGES // BATCH * EPOCHS
    print(
        f"measured (1 thread, init-bn): {1000 * step_s:.2f} ms per step of {BATCH} images; "
        f"scoring {score10k_s:.1f} s (10,000 samples, eval and train G), "
        f"{score5k_s:.1f} s (5,000)"
    )
    # bnlab gan: scored at epoch 1, every 25 and the last: 9 times; the ablation: once.
    runs = {
        "bnlab gan --seeds 0,1,2,3,4 --sample-mode both (5 variants)": (
            5 * SEEDS,
            steps * step_s + 9 * score10k_s,
        ),
        "bnlab gan-ablation --seeds 0,1,2,3,4 --epochs 200 (52 cells)": (
            52 * SEEDS,
            steps * step_s + score5k_s,
        ),
    }
    print(f"\nfull scale: {FULL_IMAGES:,} images, {EPOCHS} epochs, {SEEDS} seeds")
    print(
        f"{'run':<62} {'jobs':>5} {'CPU-h/job':>9} {'CPU-h':>7} "
        f"{'1 node':>8} {'8 nodes':>8} {'64 nodes':>9}"
    )
    for name, (jobs, job_s) in runs.items():
        walls = [wall_hours(jobs, job_s, n) for n in (1, 8, 64)]
        print(
            f"{name:<62} {jobs:>5} {job_s / 3600:>9.2f} {jobs * job_s / 3600:>7.1f} "
            + " ".join(f"{w:>7.1f}h" for w in walls)
        )


if __name__ == "__main__":
    main()
