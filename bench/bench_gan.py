"""`bnlab gan` against a faithful copy of the notebook training loop, in the same run.

The notebook loop, as the blog's notebooks write it: a torchvision-style per-sample Dataset
(PIL image -> ToTensor -> Normalize(0.5, 0.5)) behind a DataLoader, torch.nn.BatchNorm1d,
nn.BCELoss, G(z) not detached in the D step, D's weight gradients computed in the G step and
thrown away, mode switching exactly as each notebook does it. It is fed the same batches and z
as bnlab so per-step losses can be compared.

Prints, for the same variants and epochs:
  1. per-step loss agreement (max |difference| over the first steps, both sides torch BN);
  2. one variant alone: images/s of bnlab (one process, all threads) vs the notebook loop;
  3. all variants: wall time of the notebook loop run variant after variant, vs `bnlab gan`
     (processes, load balanced), and the ratio;
  4. what the BN implementation buys end to end: init-bn images/s in one process with
     torch.nn.BatchNorm1d, bnlab's plain-torch path, bnlab's compiled kernels and the fused
     BN+LeakyReLU (--fused), rounds interleaved; and the fused run's per-step loss difference.

    python bench/bench_gan.py --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bnlab import kernels
from bnlab.lab.configs import build
from bnlab.lab.data import to_unit_range
from bnlab.lab.experiments.gan.experiment import (
    DEFAULT_VARIANTS,
    GanConfig,
    GanTrainer,
    GanTraining,
    run,
)
from bnlab.lab.experiments.gan.train import load_gan_data
from bnlab.lab.models.gan import Variant, build_discriminator, build_generator, parse_variant


class NotebookMNIST(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST + ToTensor + Normalize(0.5, 0.5), sample by sample."""

    def __init__(self, images: torch.Tensor) -> None:
        self.data = images.view(-1, 28, 28).numpy()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i], mode="L")
        t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).unsqueeze(0)
        t = t.float().div(255)  # ToTensor
        return (t - 0.5) / 0.5, 0  # Normalize((0.5,), (0.5,))


class _Order(torch.utils.data.Sampler):
    def __init__(self, orders: list[torch.Tensor]) -> None:
        self.orders = orders
        self.epoch = 0

    def __iter__(self):
        return iter(self.orders[self.epoch].flatten().tolist())

    def __len__(self) -> int:
        return self.orders[self.epoch].numel()


def notebook_loop(
    variant: Variant,
    cfg: GanTraining,
    seed: int,
    images: torch.Tensor,
    epochs: int,
    record_steps: int = 0,
):
    """Train like the notebooks; returns (seconds, per-step [d_loss, g_loss] of the first steps)."""
    twin = GanTrainer(variant, cfg, seed, images, torch.device("cpu"))  # batches and z only
    torch.manual_seed(seed)
    G = build_generator(variant, norm_layer=nn.BatchNorm1d)
    D = build_discriminator(variant, norm_layer=nn.BatchNorm1d)
    criterion = nn.BCELoss()
    d_optimizer = torch.optim.Adam(D.parameters(), lr=cfg.lr)
    g_optimizer = torch.optim.Adam(G.parameters(), lr=cfg.lr)
    inputs = [twin.epoch_inputs(e) for e in range(epochs)]
    sampler = _Order([order for order, _ in inputs])
    loader = torch.utils.data.DataLoader(
        NotebookMNIST(images), batch_size=cfg.batch_size, sampler=sampler, drop_last=True
    )
    b = cfg.batch_size
    losses = []

    def reset_grad():
        d_optimizer.zero_grad()
        g_optimizer.zero_grad()

    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.epoch = epoch
        z_all = inputs[epoch][1]
        if variant.modes in ("notebook3", "none"):
            G.train()
            D.train()
        for i, (batch, _) in enumerate(loader):
            batch = batch.reshape(b, -1)
            real_labels, fake_labels = torch.ones(b, 1), torch.zeros(b, 1)
            if variant.modes == "notebook3":
                G.eval()
            elif variant.modes == "tidy":
                D.train()
                G.eval()
            outputs = D(batch)
            d_loss_real = criterion(outputs, real_labels)
            fake_images = G(z_all[i, 0])
            outputs = D(fake_images)
            d_loss_fake = criterion(outputs, fake_labels)
            d_loss = d_loss_real + d_loss_fake
            reset_grad()
            d_loss.backward(retain_graph=True)
            d_optimizer.step()
            if variant.modes != "none":
                D.eval()
                G.train()
            fake_images = G(z_all[i, 1])
            outputs = D(fake_images)
            g_loss = criterion(outputs, real_labels)
            reset_grad()
            g_loss.backward()
            g_optimizer.step()
            if len(losses) < record_steps:
                losses.append([d_loss.item(), g_loss.item()])
    return time.perf_counter() - start, np.array(losses)


def bnlab_losses(
    variant: Variant, cfg: GanTraining, seed: int, images: torch.Tensor, steps: int
) -> np.ndarray:
    trainer = GanTrainer(variant, cfg, seed, images, torch.device("cpu"))
    out = []
    epoch = 0
    while len(out) < steps:
        order, z = trainer.begin_epoch(epoch)
        for i in range(min(trainer.steps_per_epoch, steps - len(out))):
            real = to_unit_range(images[order[i]])
            d, g, *_ = trainer.step(real, z[i, 0], z[i, 1])
            out.append([float(d), float(g)])
        epoch += 1
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", default=",".join(v.name for v in DEFAULT_VARIANTS))
    parser.add_argument("--single", default="init-bn", help="variant for the one-variant test")
    parser.add_argument("--loss-steps", type=int, default=200)
    parser.add_argument("--data", default=None)
    parser.add_argument("--bn-steps", type=int, default=300, help="steps per timing in part 4")
    parser.add_argument("--bn-rounds", type=int, default=5, help="interleaved rounds, part 4")
    parser.add_argument("--only-bn", action="store_true", help="run part 4 alone")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    variants = [parse_variant(v) for v in args.variants.split(",")]
    cfg = build(
        GanConfig,
        epochs=args.epochs,
        data=Path(args.data) if args.data else None,
        variants=tuple(variants),
    )
    data = load_gan_data(
        "mnist", cfg.data, "any", 0, 100, False, 1, torch.device("cpu"), lambda _m: None
    )
    images, seed, training = data.images, cfg.seed, cfg.training
    print(f"torch {torch.__version__}, {threads} threads; {data.description}; {args.epochs} epochs")

    if args.only_bn:
        bn_backends(parse_variant(args.single), training, seed, images, args)
        return

    print(f"\n1. per-step losses, first {args.loss_steps} steps, both sides torch.nn.BatchNorm1d")
    tcfg = dataclasses.replace(training, bn="torch")
    for v in variants:
        _, nb = notebook_loop(
            v,
            tcfg,
            seed,
            images,
            1 + args.loss_steps // (len(images) // 100),
            record_steps=args.loss_steps,
        )
        mine = bnlab_losses(v, tcfg, seed, images, args.loss_steps)
        diff = np.abs(nb - mine)
        first_bad = int(np.argmax(diff.max(1) > 1e-5)) if (diff > 1e-5).any() else None
        print(
            f"   {v.name:<16} max |d loss| {diff[:, 0].max():.2e}  max |g loss| "
            f"{diff[:, 1].max():.2e}  first step over 1e-5: {first_bad}"
        )

    print(f"\n2. one variant alone ({args.single}), {args.epochs} epochs, {threads} threads")
    single = parse_variant(args.single)
    nb_s, _ = notebook_loop(single, training, seed, images, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        scfg = dataclasses.replace(cfg, variants=(single,), out=Path(tmp) / "r", jobs=1)
        res = run(scfg, log=lambda _m: None)
    mine_s = sum(r["seconds"] for r in res.records)
    n_img = args.epochs * (len(images) // 100) * 100
    print(
        f"   notebook loop {n_img / nb_s:8.0f} img/s   bnlab {n_img / mine_s:8.0f} img/s   "
        f"ratio {nb_s / mine_s:.2f}x  (bnlab wall incl. startup {res.seconds:.1f} s)"
    )

    print(f"\n3. all variants ({', '.join(v.name for v in variants)}), {args.epochs} epochs each")
    nb_total = 0.0
    for v in variants:
        secs, _ = notebook_loop(v, training, seed, images, args.epochs)
        nb_total += secs
        print(f"   notebook loop {v.name:<16} {secs:7.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run(dataclasses.replace(cfg, out=Path(tmp) / "r"), log=lambda _m: None)
        mine_all = time.perf_counter() - t0
    print(f"   notebook loop, variant after variant: {nb_total:7.1f} s")
    print(f"   bnlab gan (processes, wall incl. startup): {mine_all:7.1f} s")
    print(f"   aggregate speed-up {nb_total / mine_all:.2f}x")
    bn_backends(single, training, seed, images, args)


def bn_backends(
    variant: Variant, cfg: GanTraining, seed: int, images: torch.Tensor, args: argparse.Namespace
) -> None:
    """Part 4: one GAN variant's training steps with each BN implementation, interleaved."""
    setups = {  # name -> (GanTraining, bnlab backend)
        "torch.nn.BatchNorm1d": (dataclasses.replace(cfg, bn="torch"), "torch"),
        "bnlab, plain-torch path": (dataclasses.replace(cfg, bn="bnlab"), "torch"),
        "bnlab, compiled": (dataclasses.replace(cfg, bn="bnlab"), "compiled"),
        "bnlab, compiled + --fused": (dataclasses.replace(cfg, bn="bnlab", fused=True), "compiled"),
    }
    steps = args.bn_steps
    print(
        f"\n4. {variant.name}, {steps} steps per timing, {args.bn_rounds} interleaved rounds, "
        f"{torch.get_num_threads()} threads: images/s by BN implementation"
    )
    with kernels.use_backend("compiled"):
        bnlab_losses(variant, setups["bnlab, compiled"][0], seed, images, 2)  # build/load once
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(args.bn_rounds):
        for name, (c, backend) in setups.items():
            with kernels.use_backend(backend):
                t0 = time.perf_counter()
                bnlab_losses(variant, c, seed, images, steps)
                times[name].append(time.perf_counter() - t0)
    base = float(np.median(times["torch.nn.BatchNorm1d"]))
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"   {name:<28} {steps * 100 / med:8.0f} img/s   time ratio {med / base:.2f}")
    with kernels.use_backend("compiled"):
        plain = bnlab_losses(variant, setups["bnlab, compiled"][0], seed, images, args.loss_steps)
        fused = bnlab_losses(
            variant, setups["bnlab, compiled + --fused"][0], seed, images, args.loss_steps
        )
    diff = np.abs(plain - fused)
    print(
        f"   fused vs unfused, first {args.loss_steps} steps: max |d loss| {diff[:, 0].max():.2e}"
        f"  max |g loss| {diff[:, 1].max():.2e}"
    )


if __name__ == "__main__":
    main()
