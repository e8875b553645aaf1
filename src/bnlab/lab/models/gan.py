"""The blog's MLP GAN, with batch-norm placement, init and mode switching as data.

Discriminator: Linear(784,256) - LeakyReLU(0.2) - Linear(256,256) - LeakyReLU(0.2) -
Linear(256,1) - Sigmoid. Generator: Linear(64,256) - LeakyReLU(0.2) - Linear(256,256) -
LeakyReLU(0.2) - Linear(256,784) - Tanh. Where a variant asks for it, BN sits right after a
Linear layer, before its activation (the blog's placement). Biases are kept, as in the
notebooks, even before BN.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

import bnlab.nn as bnn

__all__ = [
    "BLOG_VARIANTS",
    "Variant",
    "build_discriminator",
    "build_generator",
    "parse_variant",
]

Init = Literal["torch-default", "he-xavier"]
# none: both nets always in train mode (notebooks 1 and 2).
# notebook3: exactly notebook 3's calls: both train() at each epoch start; G.eval() before each
#   D step; D.eval() and G.train() before each G step; D never set back to train() in an epoch.
# tidy: D.train() and G.eval() for every D step, D.eval() and G.train() for every G step.
Modes = Literal["none", "notebook3", "tidy"]
Flags3 = tuple[bool, bool, bool]


@dataclass(frozen=True)
class Variant:
    """One column of the blog's comparison: which layers get BN, init, modes, batching."""

    name: str
    init: Init = "he-xavier"
    g_norm: Flags3 = (False, False, False)  # BN after G's Linear 1..3 (3 = before Tanh)
    d_norm: Flags3 = (False, False, False)  # BN after D's Linear 1..3 (3 = on the logit)
    modes: Modes = "none"
    joint_real_fake: bool = False  # one D forward on cat(real, fake) instead of two batches
    shuffle: bool = True  # notebook 2's loader was not shuffled

    @property
    def has_bn(self) -> bool:
        return any(self.g_norm) or any(self.d_norm)

    def describe(self) -> str:
        def bits(flags: Flags3) -> str:
            return "".join("1" if f else "0" for f in flags)

        return (
            f"{self.name}: init={self.init} g_norm={bits(self.g_norm)} "
            f"d_norm={bits(self.d_norm)} modes={self.modes} joint={int(self.joint_real_fake)} "
            f"shuffle={int(self.shuffle)}"
        )

    def spec(self) -> str:
        """The command-line form that :func:`parse_variant` reads back into this variant: the
        blog name alone for a blog variant, else every field spelled out."""
        if BLOG_VARIANTS.get(self.name) == self:
            return self.name
        pairs = ":".join(f"{k}={_spell(getattr(self, k))}" for k in _FIELDS)
        return f"{self.name}=init:{pairs}"


BLOG_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("plain", init="torch-default"),  # notebook 1 "Origin"
        Variant("init"),  # notebooks 1-3, He/Xavier, no BN
        Variant(  # notebook 3, mode switching exactly as its code does it
            "init-bn", g_norm=(True, True, False), d_norm=(False, True, True), modes="notebook3"
        ),
        Variant(  # notebook 3's placement with the switching a careful user would write
            "init-bn-tidy", g_norm=(True, True, False), d_norm=(False, True, True), modes="tidy"
        ),
        Variant(  # notebook 2: BN everywhere, always train mode, loader not shuffled
            "init-bn-nomode", g_norm=(True, True, True), d_norm=(True, True, True), shuffle=False
        ),
    ]
}

_FIELDS = [f.name for f in dataclasses.fields(Variant) if f.name != "name"]
# The choices of each Literal field, from the Literal itself (one definition).
_CHOICES: dict[str, tuple[str, ...]] = {
    "init": typing.get_args(Init),
    "modes": typing.get_args(Modes),
}


def _spell(value: object) -> str:
    if isinstance(value, tuple):
        return "".join("1" if v else "0" for v in value)
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _flags(text: str, key: str) -> Flags3:
    if len(text) != 3 or set(text) - {"0", "1"}:
        raise ValueError(
            f"{key} takes three 0/1 digits, one per Linear layer (e.g. 110), got {text!r}"
        )
    return (text[0] == "1", text[1] == "1", text[2] == "1")


def _bool(text: str, key: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"{key} takes 0 or 1, got {text!r}")


def parse_variant(spec: str) -> Variant:
    """A blog variant by name, or a new one: ``NAME=BASE:key=value:key=value``.

    Example: ``mine=init-bn-tidy:d_norm=010:joint_real_fake=1``. Keys: init (torch-default |
    he-xavier), g_norm / d_norm (three 0/1 digits), modes (none | notebook3 | tidy),
    joint_real_fake (0/1), shuffle (0/1). BASE may be omitted (``mine=:g_norm=110``: from
    ``init``).
    """
    spec = spec.strip()
    if "=" not in spec.split(":", 1)[0]:
        if spec in BLOG_VARIANTS:
            return BLOG_VARIANTS[spec]
        raise ValueError(
            f"unknown variant {spec!r}; known: {', '.join(BLOG_VARIANTS)}; or define one as "
            "NAME=BASE:key=value (e.g. mine=init-bn:modes=tidy)"
        )
    name, rest = spec.split("=", 1)
    base_name, *pairs = rest.split(":")
    base = BLOG_VARIANTS.get(base_name or "init")
    if base is None:
        raise ValueError(
            f"variant {name!r}: unknown base {base_name!r}; known: {', '.join(BLOG_VARIANTS)}"
        )
    changes: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in _FIELDS:
            raise ValueError(
                f"variant {name!r}: unknown key {key!r}; keys: {', '.join(sorted(_FIELDS))}"
            )
        if key in ("g_norm", "d_norm"):
            changes[key] = _flags(value, key)
        elif key in ("joint_real_fake", "shuffle"):
            changes[key] = _bool(value, key)
        elif value in _CHOICES[key]:
            changes[key] = value
        else:
            raise ValueError(
                f"variant {name!r}: bad value {value!r} for {key}; choose one of "
                f"{', '.join(_CHOICES[key])}"
            )
    if not name:
        raise ValueError(f"variant spec {spec!r} has no name before '='")
    return dataclasses.replace(base, name=name, **changes)  # type: ignore[arg-type]


NormLayer = Callable[[int], nn.Module]


SLOPE = 0.2  # the notebooks' LeakyReLU(0.2)


def _mlp(
    sizes: list[int],
    norm: Flags3,
    out_act: nn.Module,
    norm_layer: NormLayer,
    fused: bool = False,
) -> nn.Sequential:
    """Linear - [BN] - activation per layer. ``fused``: a hidden layer's BN and LeakyReLU are
    one :class:`bnlab.nn.BatchNormAct1d` (one kernel each way); the output layer's BN, before
    Tanh or Sigmoid, stays a plain BN."""
    layers: list[nn.Module] = []
    for k, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        hidden = k < len(sizes) - 2
        layers.append(nn.Linear(fan_in, fan_out))
        if norm[k] and hidden and fused:
            layers.append(bnn.BatchNormAct1d(fan_out, act="leaky_relu", negative_slope=SLOPE))
            continue
        if norm[k]:
            layers.append(norm_layer(fan_out))
        layers.append(nn.LeakyReLU(SLOPE) if hidden else out_act)
    return nn.Sequential(*layers)


def _init(model: nn.Sequential, init: Init) -> None:
    """He (kaiming_normal_, a=0.2, fan_in, leaky_relu) on Linear 1-2, Xavier normal on 3."""
    if init == "torch-default":
        return
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for lin in linears[:-1]:
        nn.init.kaiming_normal_(lin.weight, a=SLOPE, mode="fan_in", nonlinearity="leaky_relu")
    nn.init.xavier_normal_(linears[-1].weight)


def build_generator(
    variant: Variant,
    latent: int = 64,
    hidden: int = 256,
    image: int = 784,
    norm_layer: NormLayer = bnn.BatchNorm1d,
    fused: bool = False,
) -> nn.Sequential:
    g = _mlp([latent, hidden, hidden, image], variant.g_norm, nn.Tanh(), norm_layer, fused)
    _init(g, variant.init)
    return g


def build_discriminator(
    variant: Variant,
    hidden: int = 256,
    image: int = 784,
    norm_layer: NormLayer = bnn.BatchNorm1d,
    fused: bool = False,
) -> nn.Sequential:
    d = _mlp([image, hidden, hidden, 1], variant.d_norm, nn.Sigmoid(), norm_layer, fused)
    _init(d, variant.init)
    return d
