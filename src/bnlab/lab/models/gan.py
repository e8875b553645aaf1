"""The blog's MLP GAN, with normalization placement and kind, init and mode switching as data.

Discriminator: Linear(784,256) - LeakyReLU(0.2) - Linear(256,256) - LeakyReLU(0.2) -
Linear(256,1) - Sigmoid. Generator: Linear(64,256) - LeakyReLU(0.2) - Linear(256,256) -
LeakyReLU(0.2) - Linear(256,784) - Tanh. Where a variant asks for it (``g_norm``/``d_norm``),
a normalization layer sits right after a Linear layer, before its activation (the blog's
placement). Biases are kept, as in the notebooks, even before BN.

Which normalization (``g_kind``/``d_kind``, default BN, the blog's):

- ``bn``: BatchNorm1d (bnlab's, or torch's with ``norm_layer``);
- ``renorm``: :class:`bnlab.nn.BatchRenorm1d` (r_max 3, d_max 5, the paper's values) with a
  warm-up (:data:`RENORM_WARMUP`: BN for the first 500 steps, then r_max and d_max grow
  linearly over 5,000 steps; the paper's 5k/40k scaled to this GAN's shorter runs);
- ``vbn`` (G only): :class:`bnlab.nn.VirtualBatchNorm1d` with a reference batch of
  :data:`VBN_REFERENCE` fixed z: G is wrapped in :class:`WithReference`, which puts the
  reference z in front of every training-mode batch and drops their rows from the output;
  in eval mode VBN uses its running statistics (of the reference batch) and no reference;
- ``ln``: torch's LayerNorm over the features;
- ``gn``: torch's GroupNorm on the (N, C) activations (its 2-d input form, the same as (N, C,
  1)): ``gcd(32, C)`` groups, i.e. 32 groups of 8 features for the 256-wide hidden layers
  (Wu & He's default of 32 groups).

``d_sn``: spectral normalization (Miyato et al. 2018; torch's
``torch.nn.utils.parametrizations.spectral_norm``, one power iteration per training forward)
on all three of D's Linear layers, independent of ``d_norm``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

import bnlab.nn as bnn

__all__ = [
    "BLOG_VARIANTS",
    "NORM_KINDS",
    "RENORM_WARMUP",
    "VBN_REFERENCE",
    "Variant",
    "WithReference",
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
# What the layers flagged in g_norm / d_norm are (see the module docstring); vbn in G only.
NormKind = Literal["bn", "renorm", "vbn", "ln", "gn"]
NORM_KINDS: tuple[str, ...] = typing.get_args(NormKind)
VBN_REFERENCE = 100  # reference z rows of Virtual BN: one batch (Salimans et al. used 1 batch)
RENORM_WARMUP = (500, 5000)  # (start, steps): BN before start, then r_max/d_max grow linearly
GN_GROUPS = 32


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
    g_kind: NormKind = "bn"  # what G's flagged layers are
    d_kind: NormKind = "bn"  # what D's flagged layers are (not vbn)
    d_sn: bool = False  # spectral normalization on D's Linear layers

    def __post_init__(self) -> None:
        if self.d_kind == "vbn":
            raise ValueError(
                f"variant {self.name!r}: d_kind=vbn is not offered (Virtual BN needs a fixed "
                "reference batch in front of every input; the trainer supplies one for G's z "
                "only); use it in G (g_kind=vbn) or choose bn, renorm, ln or gn for D"
            )

    @property
    def has_bn(self) -> bool:
        return any(self.g_norm) or any(self.d_norm)

    @property
    def g_batch_dependent(self) -> bool:
        """G's output in training mode depends on the batch (a BN-family layer in G), so G in
        train and eval mode differ; False: the train/eval gap is zero by construction."""
        return any(self.g_norm) and self.g_kind in ("bn", "renorm", "vbn")

    @property
    def norms_are_bn(self) -> bool:
        """Every normalization layer it has is plain BN (none counts), no spectral norm: what
        data-parallel training can convert to SyncBatchNorm."""
        g_ok = not any(self.g_norm) or self.g_kind == "bn"
        d_ok = not any(self.d_norm) or self.d_kind == "bn"
        return g_ok and d_ok and not self.d_sn

    def definition(self) -> str:
        """In words, for reports: "G: bn after Linear 1, 2; D: bn after Linear 2, 3; modes
        notebook3; init he-xavier"."""

        def where(flags: Flags3, kind: str) -> str:
            layers = [str(k + 1) for k, f in enumerate(flags) if f]
            return f"{kind} after Linear {', '.join(layers)}" if layers else "no norm"

        text = f"G: {where(self.g_norm, self.g_kind)}; D: {where(self.d_norm, self.d_kind)}"
        text += ", spectral norm on every Linear" if self.d_sn else ""
        text += f"; modes {self.modes}; init {self.init}"
        return text + ("" if self.shuffle else "; unshuffled")

    def describe(self) -> str:
        def bits(flags: Flags3) -> str:
            return "".join("1" if f else "0" for f in flags)

        return (
            f"{self.name}: init={self.init} g_norm={bits(self.g_norm)} "
            f"d_norm={bits(self.d_norm)} modes={self.modes} joint={int(self.joint_real_fake)} "
            f"shuffle={int(self.shuffle)}" + "".join(f" {k}={v}" for k, v in self._extra())
        )

    def _extra(self) -> list[tuple[str, str]]:
        """The normalization fields that differ from their defaults (the blog's BN), spelled:
        left out otherwise, so the spec and description of every earlier variant stay as
        they were."""
        return [
            (k, _spell(getattr(self, k))) for k in _NORM_FIELDS if getattr(self, k) != _DEFAULTS[k]
        ]

    def spec(self) -> str:
        """The command-line form that :func:`parse_variant` reads back into this variant: the
        blog name alone for a blog variant, else every field spelled out (the normalization
        kinds only where they are not the default BN)."""
        if BLOG_VARIANTS.get(self.name) == self:
            return self.name
        pairs = ":".join(f"{k}={_spell(getattr(self, k))}" for k in _FIELDS)
        pairs += "".join(f":{k}={v}" for k, v in self._extra())
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

_NORM_FIELDS = ("g_kind", "d_kind", "d_sn")
_ALL_FIELDS = [f.name for f in dataclasses.fields(Variant) if f.name != "name"]
_FIELDS = [k for k in _ALL_FIELDS if k not in _NORM_FIELDS]
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Variant)}
# The choices of each Literal field, from the Literal itself (one definition).
_CHOICES: dict[str, tuple[str, ...]] = {
    "init": typing.get_args(Init),
    "modes": typing.get_args(Modes),
    "g_kind": NORM_KINDS,
    "d_kind": NORM_KINDS,
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


def parse_variant(spec: str, known: Mapping[str, Variant] | None = None) -> Variant:
    """A blog variant by name, or a new one: ``NAME=BASE:key=value:key=value``.

    Example: ``mine=init-bn-tidy:d_norm=010:joint_real_fake=1``. Keys: init (torch-default |
    he-xavier), g_norm / d_norm (three 0/1 digits), modes (none | notebook3 | tidy),
    joint_real_fake (0/1), shuffle (0/1), g_kind / d_kind (bn | renorm | vbn | ln | gn; vbn
    in G only), d_sn (0/1). BASE may be omitted (``mine=:g_norm=110``: from ``init``).

    ``known``: the names a spec may use, as itself or as a BASE (default the blog's five;
    ``bnlab gan-norms`` adds its nine normalizations).
    """
    known = BLOG_VARIANTS if known is None else known
    spec = spec.strip()
    if "=" not in spec.split(":", 1)[0]:
        if spec in known:
            return known[spec]
        raise ValueError(
            f"unknown variant {spec!r}; known: {', '.join(known)}; or define one as "
            "NAME=BASE:key=value (e.g. mine=init-bn:modes=tidy)"
        )
    name, rest = spec.split("=", 1)
    base_name, *pairs = rest.split(":")
    base = known.get(base_name) if base_name else BLOG_VARIANTS["init"]
    if base is None:
        raise ValueError(f"variant {name!r}: unknown base {base_name!r}; known: {', '.join(known)}")
    changes: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in _ALL_FIELDS:
            raise ValueError(
                f"variant {name!r}: unknown key {key!r}; keys: {', '.join(sorted(_ALL_FIELDS))}"
            )
        if key in ("g_norm", "d_norm"):
            changes[key] = _flags(value, key)
        elif key in ("joint_real_fake", "shuffle", "d_sn"):
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


def norm_layer_of(kind: NormKind, bn: NormLayer = bnn.BatchNorm1d) -> NormLayer:
    """The layer factory (features -> module) of a normalization kind; ``bn`` is the BN class
    for kind bn (bnlab's or torch's)."""
    if kind == "bn":
        return bn
    if kind == "renorm":
        start, steps = RENORM_WARMUP
        return lambda c: bnn.BatchRenorm1d(c, warmup_start=start, warmup_steps=steps)
    if kind == "vbn":
        return lambda c: bnn.VirtualBatchNorm1d(c, reference_size=VBN_REFERENCE)
    if kind == "ln":
        return nn.LayerNorm
    if kind == "gn":
        return lambda c: nn.GroupNorm(math.gcd(GN_GROUPS, c), c)
    raise ValueError(f"unknown normalization {kind!r}; choose one of {', '.join(NORM_KINDS)}")


def _mlp(
    sizes: list[int],
    norm: Flags3,
    out_act: nn.Module,
    norm_layer: NormLayer,
    fused: bool = False,
) -> nn.Sequential:
    """Linear - [norm] - activation per layer. ``fused``: a hidden layer's BN and LeakyReLU are
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


class WithReference(nn.Module):
    """G with Virtual BN: in training mode the fixed reference z (a buffer, not saved: the
    trainer draws it from the seed) go in front of every batch, and their rows are dropped
    from the output, so each sample is normalized with the reference batch and itself alone.
    In eval mode VBN uses its running statistics: G runs on the batch alone."""

    def __init__(self, net: nn.Sequential, reference: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("reference", reference, persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        if not self.training:
            return self.net(z)
        ref = typing.cast(Tensor, self.reference)
        return self.net(torch.cat([ref.to(z.dtype), z]))[ref.shape[0] :]


def build_generator(
    variant: Variant,
    latent: int = 64,
    hidden: int = 256,
    image: int = 784,
    norm_layer: NormLayer = bnn.BatchNorm1d,
    fused: bool = False,
    reference: Tensor | None = None,
) -> nn.Module:
    """G of ``variant``. ``norm_layer``: the BN class of kind bn; ``fused`` applies to BN
    only; ``reference``: (VBN_REFERENCE, latent) fixed z, needed for g_kind vbn (see
    :class:`WithReference`)."""
    kind = variant.g_kind
    layer = norm_layer_of(kind, norm_layer)
    g = _mlp(
        [latent, hidden, hidden, image], variant.g_norm, nn.Tanh(), layer, fused and kind == "bn"
    )
    _init(g, variant.init)
    if kind != "vbn" or not any(variant.g_norm):
        return g
    if reference is None or reference.shape != (VBN_REFERENCE, latent):
        got = None if reference is None else tuple(reference.shape)
        raise ValueError(
            f"variant {variant.name!r}: Virtual BN in G needs reference=(VBN_REFERENCE, latent) "
            f"= ({VBN_REFERENCE}, {latent}) fixed z, got {got}"
        )
    return WithReference(g, reference)


def build_discriminator(
    variant: Variant,
    hidden: int = 256,
    image: int = 784,
    norm_layer: NormLayer = bnn.BatchNorm1d,
    fused: bool = False,
) -> nn.Sequential:
    """D of ``variant``; with ``d_sn`` its Linear layers spectrally normalized (after init)."""
    kind = variant.d_kind
    layer = norm_layer_of(kind, norm_layer)
    d = _mlp(
        [image, hidden, hidden, 1], variant.d_norm, nn.Sigmoid(), layer, fused and kind == "bn"
    )
    _init(d, variant.init)
    if variant.d_sn:
        for k, m in enumerate(d):
            if isinstance(m, nn.Linear):
                d[k] = spectral_norm(m)
    return d
