"""`bnlab gan`: the blog's three MNIST GAN notebooks, side by side, on real data.

Every variant of a seed sees the same batches and the same z at every step, so differences
between variants come from the variant. The training step computes exactly the notebooks'
numbers with less work:

- the D step draws G(z) under ``no_grad`` (the notebook backpropagates into G and then throws
  those gradients away);
- the G step asks autograd for G's gradients only, so D's weight gradients are never formed;
- the dataset sits in memory as uint8 and batches come from indexing a seeded permutation.

See bench/bench_gan.py for the speed against a faithful copy of the notebook loop.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.config import IntList, StrList
from bnlab.data import batch_indices, load_dataset, to_unit_range
from bnlab.experiments.common import data_dir_arg, derived_generator, resolve_device
from bnlab.experiments.pool import Cell, Progress, cpu_count, emit, run_cells
from bnlab.images import save_grid
from bnlab.models.gan import Variant, build_discriminator, build_generator, parse_variant
from bnlab.optim import ExactAdam
from bnlab.runs import (
    append_jsonl,
    atomic_write_json,
    config_to_dict,
    latest_run_dir,
    load_checkpoint,
    new_run_dir,
    read_jsonl,
    save_checkpoint,
    write_jsonl,
)

__all__ = ["GanConfig", "GanResult", "GanTrainer", "run"]

DEFAULT_VARIANTS = ("plain", "init", "init-bn", "init-bn-tidy", "init-bn-nomode")


@dataclass(frozen=True)
class GanConfig:
    """Reproduce the blog's MNIST GAN notebooks side by side: all variants, same batches and z.

    Defaults are the blog's: five variants, seed 777, 200 epochs over whatever MNIST split is
    present. On a 2-core CPU that takes about 10 minutes on the 10k test split and about an
    hour on the full 60k train split; --epochs shortens it.
    """

    variants: StrList = DEFAULT_VARIANTS
    """variants to train: blog names (plain, init, init-bn, init-bn-tidy, init-bn-nomode) or
    new ones as NAME=BASE:key=value:... (keys init, g_norm, d_norm, modes, joint_real_fake,
    shuffle; e.g. mine=init-bn:modes=tidy:d_norm=010)"""
    epochs: int = 200
    """passes over the training split (the blog: 200)"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    split: Literal["any", "train", "test"] = "any"
    """split to train on; any = train if present, else test (said at start)"""
    out: Path | None = None
    """run directory (default: runs/gan-<date>-<time>; with --resume: the newest runs/gan-*)"""
    seed: int = 777
    """the notebooks' seed: fixes init, data order and z"""
    seeds: IntList = ()
    """several seeds, each a full run of every variant (overrides --seed)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where to train; auto = cuda if available"""
    bn: Literal["bnlab", "torch"] = "bnlab"
    """whose BatchNorm1d the BN variants use (torch's for comparison)"""
    batch_size: int = 100
    """the notebooks' batch size (drop_last)"""
    lr: float = 2e-4
    """Adam learning rate, default betas, as in the notebooks"""
    latent: int = 64
    """size of z"""
    hidden: int = 256
    """width of the hidden layers of G and D"""
    subset: int = 0
    """train on the first N images only (0 = the whole split); for quick checks"""
    sample_every: int = 25
    """save sample grids (and score samples) at epoch 1, every N epochs and the last (the
    blog: 1 and every 25)"""
    metrics: bool = True
    """score samples (Frechet distance, class coverage, stray dots) on a classifier trained
    and cached by bnlab (first use: about a minute)"""
    metrics_at: Literal["sample-epochs", "last"] = "sample-epochs"
    """when to score: at every sample epoch (curves), or only after the last epoch (cheaper)"""
    metric_samples: int = 10_000
    """samples from a fixed z per scoring (10,000 as usual for FID-style metrics)"""
    sample_mode: Literal["eval", "train", "both"] = "eval"
    """G's mode when scoring: eval (running statistics, what a user deploys), train (batch
    statistics over batches of --batch-size, what the blog's images showed), or both"""
    checkpoint_every: int = 5
    """epochs between checkpoints; a resumed run redoes at most this many"""
    jobs: int = 0
    """parallel training processes; 0 = one per CPU core, at most one per (seed, variant)"""
    resume: bool = False
    """continue an interrupted run in --out (or the newest runs/gan-*)"""
    tensorboard: bool = False
    """also log losses, metrics and sample grids to RUN_DIR/tensorboard (needs the tensorboard
    package: pip install 'bnlab[tensorboard]')"""

    @property
    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)


@dataclass
class GanResult:
    run_dir: Path
    records: list[dict[str, Any]]  # one per (seed, variant, epoch)
    failed: dict[str, str]  # cell key -> message
    seconds: float


# ---- one training run: a (seed, variant) cell --------------------------------------------------


class NonFiniteLoss(RuntimeError):
    pass


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    return bnn.BatchNorm1d if kind == "bnlab" else nn.BatchNorm1d


def cell_key(seed: int, variant: str) -> str:
    return f"s{seed}/{variant}"


def sample_path(
    run_dir: Path, variant: str, epoch: int, seed: int, primary: bool, view: str
) -> Path:
    """samples/<variant>/epoch-NNN.png (eval mode, fixed z) and epoch-NNN-train.png (the
    notebook's view: the last training batch, G in train mode). Seeds after the first add
    -s<seed>."""
    suffix = ("" if view == "eval" else f"-{view}") + ("" if primary else f"-s{seed}")
    return run_dir / "samples" / variant / f"epoch-{epoch:03d}{suffix}.png"


def is_sample_epoch(epoch: int, every: int, last: int) -> bool:
    return epoch == 1 or epoch == last or (every > 0 and epoch % every == 0)


class GanTrainer:
    """G, D and their optimizers for one variant and seed; trains one epoch at a time.

    Args:
        images: (N, 784) uint8, the whole training split (on the training device).
    """

    def __init__(
        self, variant: Variant, cfg: GanConfig, seed: int, images: Tensor, device: torch.device
    ) -> None:
        self.variant, self.cfg, self.seed = variant, cfg, seed
        self.images = images
        self.device = device
        torch.manual_seed(seed)  # init: same Linear weights for variants with the same init
        norm = _norm_layer(cfg.bn)
        self.G = build_generator(variant, cfg.latent, cfg.hidden, images.shape[1], norm).to(device)
        self.D = build_discriminator(variant, cfg.hidden, images.shape[1], norm).to(device)
        self.g_params = list(self.G.parameters())
        self.d_params = list(self.D.parameters())
        # The notebooks' Adam (default betas), bit for bit; see bnlab.optim for why not torch's.
        self.g_opt = ExactAdam(self.g_params, lr=cfg.lr)
        self.d_opt = ExactAdam(self.d_params, lr=cfg.lr)
        b = cfg.batch_size
        self.ones = torch.ones(b, 1, device=device)
        self.zeros = torch.zeros(b, 1, device=device)
        self.last_fake: Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.images.shape[0] // self.cfg.batch_size  # drop_last

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])

    def epoch_inputs(self, epoch: int) -> tuple[Tensor, Tensor]:
        """(steps, B) batch indices and (steps, 2, B, latent) z of an epoch (0-based)."""
        cfg = self.cfg
        order = batch_indices(
            self.images.shape[0],
            cfg.batch_size,
            derived_generator(self.seed, "order", epoch),
            shuffle=self.variant.shuffle,
        )
        z = torch.randn(
            self.steps_per_epoch,
            2,
            cfg.batch_size,
            cfg.latent,
            generator=derived_generator(self.seed, "z", epoch),
        )
        return order.to(self.device), z.to(self.device)

    def _d_forward(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        if self.variant.joint_real_fake:
            out = self.D(torch.cat([real, fake]))
            b = real.shape[0]
            return out[:b], out[b:]
        return self.D(real), self.D(fake)

    def step(self, real: Tensor, z_d: Tensor, z_g: Tensor) -> tuple[Tensor, ...]:
        """One D step and one G step, in the variant's modes; returns detached statistics."""
        modes = self.variant.modes
        # --- D step: maximize log D(x) + log(1 - D(G(z)))
        if modes == "notebook3":
            self.G.eval()
        elif modes == "tidy":
            self.D.train()
            self.G.eval()
        with torch.no_grad():
            fake = self.G(z_d)
        d_real, d_fake = self._d_forward(real, fake)
        d_loss = F.binary_cross_entropy(d_real, self.ones) + F.binary_cross_entropy(
            d_fake, self.zeros
        )
        self.d_opt.step(torch.autograd.grad(d_loss, self.d_params))
        # --- G step: maximize log D(G(z)) (non-saturating loss, as in the notebooks)
        if modes != "none":
            self.D.eval()
            self.G.train()
        fake = self.G(z_g)
        g_out = self.D(fake)
        g_loss = F.binary_cross_entropy(g_out, self.ones)
        self.g_opt.step(torch.autograd.grad(g_loss, self.g_params))
        self.last_fake = fake
        return (
            d_loss.detach(),
            g_loss.detach(),
            d_real.detach().mean(),
            d_fake.detach().mean(),
            (g_out.detach() >= 0.5).float().mean(),
        )

    def train_epoch(
        self, epoch: int, on_step: Callable[[int, float, float], None] | None = None
    ) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based); returns the epoch's means and timings."""
        start = time.perf_counter()
        if self.variant.modes in ("notebook3", "none"):  # both nets train() at epoch start
            self.G.train()
            self.D.train()
        order, z = self.epoch_inputs(epoch)
        stats = torch.zeros(5, device=self.device)
        steps = self.steps_per_epoch
        report_every = max(1, steps // 20)
        for i in range(steps):
            real = to_unit_range(self.images[order[i]])
            try:
                out = self.step(real, z[i, 0], z[i, 1])
            except RuntimeError as exc:  # e.g. BCE refusing a NaN probability
                if self._all_finite():
                    raise
                raise NonFiniteLoss(
                    f"weights became non-finite in epoch {epoch + 1}, step {i + 1} ({exc})"
                ) from exc
            stats += torch.stack(out)
            if on_step is not None and (i + 1) % report_every == 0:
                on_step(i + 1, float(out[0]), float(out[1]))
        means = (stats / steps).tolist()
        seconds = time.perf_counter() - start
        record: dict[str, Any] = dict(
            zip(("d_loss", "g_loss", "d_x", "d_g_z", "g_acc"), means, strict=True)
        )
        if not all(math.isfinite(v) for v in means[:2]):
            raise NonFiniteLoss(
                f"losses became non-finite in epoch {epoch + 1} (D {means[0]}, G {means[1]})"
            )
        record["seconds"] = seconds
        record["images_per_s"] = steps * self.cfg.batch_size / seconds
        return record

    @torch.no_grad()
    def samples_train_mode(self, z: Tensor) -> Tensor:
        """G(z) in train mode, batch by batch of the training batch size, as the notebooks'
        images were made; on a copy, so G's running statistics stay untouched."""
        g = copy.deepcopy(self.G).train()
        z = z.to(self.device)
        b = self.cfg.batch_size
        return torch.cat([g(z[k : k + b]) for k in range(0, z.shape[0] - b + 1, b)])

    def _all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in (*self.g_params, *self.d_params))

    @torch.no_grad()
    def samples(self, z: Tensor) -> Tensor:
        """G(z) in eval mode (running statistics), restoring G's mode afterwards."""
        was_training = self.G.training
        self.G.eval()
        out = self.G(z.to(self.device))
        self.G.train(was_training)
        return out


# ---- the worker side: train a chunk of epochs of one cell ------------------------------------

# Per process: a worker trains many chunks; it looks up and copies the data once.
_DATA_CACHE: dict[tuple[Any, ...], tuple[Tensor, str]] = {}


def load_images(
    cfg: GanConfig, device: torch.device, log: Callable[[str], None] | None = None
) -> tuple[Tensor, str]:
    """The training images as (N, 784) uint8 on ``device``, and a one-line description."""
    key = (cfg.dataset, cfg.split, str(cfg.data), cfg.subset, str(device))
    if key not in _DATA_CACHE:
        ds = load_dataset(
            cfg.dataset,
            split=cfg.split,
            data_dir=data_dir_arg(cfg.data),
            log=log if log is not None else (lambda _msg: None),
        )
        images = ds.images.reshape(len(ds), -1)
        if cfg.subset:
            images = images[: cfg.subset]
        images = images.contiguous().to(device)
        what = f"{cfg.dataset} {ds.split} split, {images.shape[0]:,} images from {ds.source}"
        _DATA_CACHE[key] = (images, what)
    return _DATA_CACHE[key]


_EVALUATORS: dict[tuple[Any, ...], Any] = {}


def get_evaluator(cfg: GanConfig, log: Callable[[str], None] | None = None) -> Any:
    """The dataset's GanEvaluator (classifier trained once, then loaded from the cache)."""
    from bnlab.metrics import GanEvaluator

    key = (cfg.dataset, str(cfg.data), cfg.device)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = GanEvaluator.load(
            cfg.dataset,
            data_dir=data_dir_arg(cfg.data),
            device=resolve_device(cfg.device),
            log=log if log is not None else (lambda _m: None),
        )
    return _EVALUATORS[key]


def score_samples(trainer: GanTrainer, cfg: GanConfig, seed: int) -> dict[str, float]:
    """Image metrics of 10,000 samples from a fixed z, in the configured G mode(s)."""
    evaluator = get_evaluator(cfg)
    z = torch.randn(cfg.metric_samples, cfg.latent, generator=derived_generator(seed, "metric-z"))
    out: dict[str, float] = {}
    if cfg.sample_mode in ("eval", "both"):
        out.update(evaluator.score(trainer.samples(z)))
    if cfg.sample_mode in ("train", "both"):
        out.update(
            {f"{k}_train": v for k, v in evaluator.score(trainer.samples_train_mode(z)).items()}
        )
    return out


def train_chunk(payload: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """Train epochs [start, end) of one (seed, variant) cell from its checkpoint."""
    cfg = GanConfig(**payload["config"])
    variant = Variant(**payload["variant"])
    seed: int = payload["seed"]
    run_dir = Path(payload["run_dir"])
    primary: bool = payload["primary"]
    device = resolve_device(cfg.device)
    images, _ = load_images(cfg, device)
    trainer = GanTrainer(variant, cfg, seed, images, device)
    ckpt_path = checkpoint_path(run_dir, seed, variant.name)
    history: list[dict[str, Any]] = []
    if start > 0:
        state = load_checkpoint(ckpt_path)
        if state["epoch"] != start:
            raise RuntimeError(f"{ckpt_path} holds epoch {state['epoch']}, expected {start}")
        trainer.load_state_dict(state["trainer"])
        history = state["history"]
    key = cell_key(seed, variant.name)
    z_fixed = torch.randn(100, cfg.latent, generator=derived_generator(seed, "sample-z"))
    failed = None
    done = start
    new_records = []
    for epoch in range(start, end):

        def on_step(step: int, d: float, g: float, epoch: int = epoch) -> None:
            emit(
                {
                    "kind": "step",
                    "key": key,
                    "epoch": epoch,
                    "step": step,
                    "steps": trainer.steps_per_epoch,
                    "d_loss": d,
                    "g_loss": g,
                }
            )

        try:
            stats = trainer.train_epoch(epoch, on_step)
        except NonFiniteLoss as exc:
            failed = f"{variant.name} (seed {seed}) stopped: {exc}"
            break
        record: dict[str, Any] = {
            "seed": seed,
            "variant": variant.name,
            "epoch": epoch + 1,
            **stats,
        }
        if is_sample_epoch(epoch + 1, cfg.sample_every, cfg.epochs):
            save_grid(
                sample_path(run_dir, variant.name, epoch + 1, seed, primary, "eval"),
                trainer.samples(z_fixed),
            )
            assert trainer.last_fake is not None
            save_grid(
                sample_path(run_dir, variant.name, epoch + 1, seed, primary, "train"),
                trainer.last_fake[:100],
            )
            if cfg.metrics and (cfg.metrics_at == "sample-epochs" or epoch + 1 == cfg.epochs):
                record.update(score_samples(trainer, cfg, seed))
        history.append(record)
        new_records.append(record)
        done = epoch + 1
        emit({"kind": "epoch", "key": key, "record": record})
    if done > start or failed:
        save_checkpoint(
            ckpt_path,
            {"epoch": done, "trainer": trainer.state_dict(), "history": history, "failed": failed},
        )
    return {"done": done, "failed": failed, "records": new_records}


def checkpoint_path(run_dir: Path, seed: int, variant: str) -> Path:
    return run_dir / "checkpoints" / f"s{seed}" / f"{variant}.pt"


# ---- the parent side --------------------------------------------------------------------------


class _Bars(Progress):
    """Live progress: a tqdm bar per cell with its losses (one shared bar when there are many
    cells); metrics.jsonl is appended as chunks finish."""

    MAX_BARS = 10  # more cells than this get one overall bar: a screen of bars helps nobody

    def __init__(self, cells: list[Cell], steps_per_epoch: int, metrics: Path) -> None:
        from tqdm.auto import tqdm

        self.metrics = metrics
        self.sinks: list[Callable[[list[dict[str, Any]]], None]] = []
        self.steps_per_epoch = steps_per_epoch
        self.total = {c.key: c.total for c in cells}
        self.seen = {c.key: c.done * steps_per_epoch for c in cells}
        self.done = sum(1 for c in cells if c.remaining == 0)
        self.n = len(cells)
        self.width = max(len(c.key) for c in cells)
        self.bars: dict[str, Any] = {}
        common = dict(unit="step", leave=True, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        if len(cells) > self.MAX_BARS:
            self.shared = tqdm(
                total=sum(c.total for c in cells) * steps_per_epoch,
                initial=sum(self.seen.values()),
                desc=self._overall(),
                **common,
            )
            return
        self.shared = None
        for pos, cell in enumerate(cells):
            self.bars[cell.key] = tqdm(
                total=cell.total * steps_per_epoch,
                initial=self.seen[cell.key],
                desc=self._desc(cell.key, cell.done),
                position=pos,
                **common,
            )

    def _overall(self) -> str:
        return f"{self.done}/{self.n} cells done"

    def _desc(self, key: str, epoch: int) -> str:
        return f"{key:<{self.width}} e{epoch:>3}/{self.total[key]}"

    def _advance(self, key: str, pos: int) -> Any:
        bar = self.shared if self.shared is not None else self.bars[key]
        bar.update(max(0, pos - self.seen[key]))
        self.seen[key] = max(self.seen[key], pos)
        return bar

    def event(self, event: dict[str, Any]) -> None:
        key = event.get("key")
        if event["kind"] != "step" or key not in self.seen:
            return
        bar = self._advance(key, event["epoch"] * event["steps"] + event["step"])
        losses = f"D {event['d_loss']:.3f} G {event['g_loss']:.3f}"
        if self.shared is not None:
            bar.set_postfix_str(f"{key} e{event['epoch'] + 1} {losses}", refresh=False)
        else:
            bar.set_description_str(self._desc(key, event["epoch"] + 1), refresh=False)
            bar.set_postfix_str(losses, refresh=False)

    def chunk_done(self, cell: Cell, result: dict[str, Any]) -> None:
        append_jsonl(self.metrics, result.get("records", []))
        for sink in self.sinks:
            sink(result.get("records", []))
        bar = self._advance(cell.key, cell.done * self.steps_per_epoch)
        if cell.remaining == 0:
            self.done += 1
            if self.shared is not None:
                bar.set_description_str(self._overall())
        if cell.failed:
            if self.shared is None:
                bar.set_postfix_str("FAILED")
            bar.write(f"{cell.key}: {cell.failed}")
            append_jsonl(
                self.metrics,
                [{"event": "failed", "key": cell.key, "message": cell.failed, "epoch": cell.done}],
            )

    def close(self) -> None:
        for bar in [*self.bars.values(), self.shared]:
            if bar is not None:
                bar.close()


class _TensorBoard:
    """Scalars per (seed, variant) and the sample grids of the first seed, as chunks finish."""

    def __init__(self, run_dir: Path, primary_seed: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError(
                "--tensorboard needs the tensorboard package: pip install 'bnlab[tensorboard]'"
            ) from exc
        self.run_dir, self.primary = run_dir, primary_seed
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, records: list[dict[str, Any]]) -> None:
        import numpy as np
        from PIL import Image

        for r in records:
            tag, epoch = f"s{r['seed']}/{r['variant']}", r["epoch"]
            for key, value in r.items():
                if isinstance(value, float) and key not in ("seconds",):
                    self.writer.add_scalar(f"{tag}/{key}", value, epoch)
            primary = r["seed"] == self.primary
            for view in ("eval", "train"):
                png = sample_path(self.run_dir, r["variant"], epoch, r["seed"], primary, view)
                if png.exists():
                    image = np.asarray(Image.open(png).convert("L"))
                    self.writer.add_image(f"{tag}/samples-{view}", image, epoch, dataformats="HW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _resolve_run_dir(cfg: GanConfig, prefix: str = "gan") -> tuple[GanConfig, Path]:
    if cfg.resume:
        run_dir = cfg.out if cfg.out is not None else latest_run_dir("runs", prefix)
        if run_dir is None or not (Path(run_dir) / "config.json").exists():
            where = cfg.out if cfg.out is not None else f"runs/{prefix}-*"
            raise ValueError(f"--resume: no run to continue in {where} (no config.json there)")
        import json

        saved = json.loads((Path(run_dir) / "config.json").read_text())["config"]
        saved.update(resume=True, out=str(run_dir), jobs=cfg.jobs or saved.get("jobs", 0))
        for name in ("data",):  # where the data lives may change between machines
            if getattr(cfg, name) is not None:
                saved[name] = str(getattr(cfg, name))
        return _config_from_dict(saved), Path(run_dir)
    run_dir = cfg.out if cfg.out is not None else new_run_dir("runs", prefix)
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        raise ValueError(
            f"{run_dir} already holds a run: continue it with --resume, or pick another --out"
        )
    return cfg, run_dir


def _config_from_dict(d: dict[str, Any]) -> GanConfig:
    fields = {f.name: f for f in dataclasses.fields(GanConfig)}
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k not in fields:
            continue
        if isinstance(v, list):
            v = tuple(v)
        if k in ("data", "out") and v is not None:
            v = Path(v)
        kwargs[k] = v
    return GanConfig(**kwargs)


def run(
    cfg: GanConfig,
    log: Callable[[str], None] = print,
    experiment: str = "gan",
    extra: dict[str, Any] | None = None,
) -> GanResult:
    """Train every (seed, variant) cell, write the run directory, return the records.

    ``experiment`` and ``extra`` go into config.json, for experiments built on this one (the
    ablation); only ``experiment="gan"`` writes the GAN report and summary table at the end.
    """
    started = time.perf_counter()
    variants = [parse_variant(s) for s in cfg.variants]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {', '.join(names)}")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {cfg.epochs}")
    cfg, run_dir = _resolve_run_dir(cfg, experiment)
    device = resolve_device(cfg.device)
    images, what = load_images(cfg, device, log=log)
    steps = images.shape[0] // cfg.batch_size
    if steps < 1:
        raise ValueError(
            f"{what}: fewer images than one batch of {cfg.batch_size}; use more data or "
            "a smaller --batch-size"
        )
    seeds = cfg.seed_list
    cells = []
    for seed in seeds:
        for v in variants:
            cells.append(
                Cell(
                    cell_key(seed, v.name),
                    0,
                    cfg.epochs,
                    payload={
                        "config": config_to_dict(cfg),
                        "variant": dataclasses.asdict(v),
                        "seed": seed,
                        "run_dir": str(run_dir),
                        "primary": seed == seeds[0],
                    },
                )
            )
    metrics = run_dir / "metrics.jsonl"
    if cfg.resume:
        records = _restore(cells, run_dir, cfg)
        write_jsonl(metrics, records)  # exactly the checkpointed epochs, nothing half-done
        log(f"resuming {run_dir}: " + ", ".join(f"{c.key} at epoch {c.done}" for c in cells))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / "config.json",
            {
                "experiment": experiment,
                **(extra or {}),
                "config": config_to_dict(cfg),
                "variants": {v.name: dataclasses.asdict(v) for v in variants},
                "data": what,
                "torch": torch.__version__,
            },
        )
        write_jsonl(metrics, [])
        real = to_unit_range(images[:100])
        save_grid(run_dir / "real.png", real)
    if cfg.metrics:  # train (or load) the metric classifier once, before the workers need it
        get_evaluator(cfg, log)  # logs what it loaded or trained
    jobs = cfg.jobs or min(cpu_count(), len(cells))
    if device.type == "cuda":
        jobs = 1  # one GPU: processes would only queue on it
    log(
        f"training {len(variants)} variant(s) x {len(seeds)} seed(s) on {what}; "
        f"{cfg.epochs} epochs of {steps} steps; {jobs} process(es); run dir {run_dir}"
    )
    for v in variants:
        log("  " + v.describe())
    bars = _Bars(cells, steps, metrics)
    board = _TensorBoard(run_dir, seeds[0]) if cfg.tensorboard else None
    if board is not None:
        bars.sinks.append(board.log)
    try:
        run_cells(cells, train_chunk, max(1, cfg.checkpoint_every), jobs, bars)
    except KeyboardInterrupt:
        bars.close()
        log(f"\ninterrupted; continue with: bnlab {experiment} --resume --out {run_dir}")
        raise
    bars.close()
    if board is not None:
        board.close()
    records = [r for r in read_jsonl(metrics) if "event" not in r]
    failed = {c.key: c.failed for c in cells if c.failed}
    result = GanResult(run_dir, records, failed, time.perf_counter() - started)
    if experiment == "gan":
        finish(run_dir, result, variants, seeds, log)
    return result


def _restore(cells: list[Cell], run_dir: Path, cfg: GanConfig) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for cell in cells:
        seed, variant = cell.payload["seed"], cell.payload["variant"]["name"]
        path = checkpoint_path(run_dir, seed, variant)
        if path.exists():
            state = load_checkpoint(path)
            cell.done = int(state["epoch"])
            cell.failed = state.get("failed")
            records.extend(state["history"])
    return records


def finish(
    run_dir: Path,
    result: GanResult,
    variants: list[Variant],
    seeds: tuple[int, ...],
    log: Callable[[str], None],
) -> None:
    """Figures, report.html, summary.json and the summary table of a finished run."""
    from bnlab.report import build_report

    report = build_report([run_dir])  # also loss_d.png, loss_g.png and the other figures
    log("")
    log(summary_table(result.records, [v.name for v in variants], seeds))
    for key, msg in result.failed.items():
        log(f"FAILED {key}: {msg}")
    log(
        f"\n{run_dir}: report.html, summary.json, metrics.jsonl, samples/, loss_d.png, "
        f"loss_g.png ({result.seconds / 60:.1f} min)\nopen {report}"
    )


def summary_table(
    records: list[dict[str, Any]], variants: list[str], seeds: tuple[int, ...]
) -> str:
    """Last-epoch numbers per variant (mean over seeds)."""
    head = (
        f"{'variant':<16} {'epoch':>5} {'D loss':>7} {'G loss':>7} {'D(x)':>6} "
        f"{'D(G(z))':>7} {'G acc':>6} {'img/s':>7}"
    )
    lines = [head, "-" * len(head)]
    for name in variants:
        rows = [r for r in records if r["variant"] == name]
        if not rows:
            lines.append(f"{name:<16} {'-':>5}")
            continue
        last_epoch = max(r["epoch"] for r in rows)
        last = [r for r in rows if r["epoch"] == last_epoch]

        def m(k: str, last: list[dict[str, Any]] = last) -> float:
            return sum(r[k] for r in last) / len(last)

        lines.append(
            f"{name:<16} {last_epoch:>5} {m('d_loss'):>7.3f} {m('g_loss'):>7.3f} "
            f"{m('d_x'):>6.3f} {m('d_g_z'):>7.3f} {m('g_acc'):>6.3f} {m('images_per_s'):>7.0f}"
        )
    if len(seeds) > 1:
        lines.append(f"(means over seeds {', '.join(map(str, seeds))})")
    return "\n".join(lines)
