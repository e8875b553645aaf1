"""`bnlab gan --tensorboard`: scalars per (seed, variant) and the first seed's sample grids,
logged by the driver as chunks finish (workers never touch the run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.lab.experiments.gan.config import GanConfig
from bnlab.lab.experiments.gan.train import sample_path

__all__ = ["TensorBoard", "tensorboard_observer"]


class TensorBoard:
    def __init__(self, run_dir: Path, primary_seed: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # GanConfig.validate checked it exists

        self.run_dir, self.primary = run_dir, primary_seed
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def records(self, records: list[dict[str, Any]]) -> None:
        import numpy as np
        from PIL import Image

        for r in records:
            tag, epoch = f"s{r['seed']}/{r['variant']}", r["epoch"]
            for key, value in r.items():
                if isinstance(value, float) and key != "seconds":
                    self.writer.add_scalar(f"{tag}/{key}", value, epoch)
            primary = r["seed"] == self.primary
            for view in ("eval", "train"):
                png = self.run_dir / sample_path(r["variant"], epoch, r["seed"], primary, view)
                if png.exists():
                    image = np.asarray(Image.open(png).convert("L"))
                    self.writer.add_image(f"{tag}/samples-{view}", image, epoch, dataformats="HW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_observer(cfg: GanConfig, run_dir: Path) -> TensorBoard | None:
    return TensorBoard(run_dir, cfg.seed_list[0]) if cfg.tensorboard else None
