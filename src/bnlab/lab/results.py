"""Typed results: a run directory read back (:func:`load_run`), and the verdict on a claim.

Every analysis and report reads a run through :func:`load_run`: the experiment's typed config
(config.json's ``"config"`` through its dataclass), the rest of config.json, and the records
of metrics.jsonl. Analyses return dataclasses built from it; reports render those. Nothing
here trains or imports an experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from bnlab.lab.configs import config_from_dict
from bnlab.lab.runs import read_config, read_jsonl

__all__ = [
    "ONE_SEED",
    "VERDICTS",
    "Claim",
    "Run",
    "Verdict",
    "load_run",
    "no_answer",
    "verdict_text",
]

# Several seeds give a verdict: "holds" / "does not hold" when the 95% CI of the measured
# difference lies on one side of the claim's line, "inconclusive" when it straddles it. One seed
# has no interval: it gives a direction, "agrees" / "disagrees" (the measured difference points
# the claim's way or the other way). "no answer": the run is too small to compare anything
# (e.g. no model learned to draw digits yet), whatever the numbers say.
Verdict = Literal["holds", "does not hold", "inconclusive", "agrees", "disagrees", "no answer"]
VERDICTS: tuple[Verdict, ...] = (
    "holds",
    "does not hold",
    "inconclusive",
    "agrees",
    "disagrees",
    "no answer",
)
ONE_SEED: tuple[Verdict, ...] = ("agrees", "disagrees")  # directions, not verdicts


def no_answer(claims: list[Claim], why: str) -> list[Claim]:
    """The claims of a run too small to answer them (``why``, e.g. "no model learned"): their
    numbers stay, each verdict is "no answer" with the reason in its rule; unchanged if
    ``why`` is ""."""
    if not why:
        return claims
    return [replace(c, verdict="no answer", rule=f"{c.rule}. No answer: {why}") for c in claims]


def verdict_text(v: Verdict, source: str = "the claim") -> str:
    """The verdict as a reader sees it, e.g. "agrees with the blog (one seed)"."""
    if v in ONE_SEED:
        return f"{v} with {source} (one seed)"
    return v


C = TypeVar("C")


@dataclass
class Claim:
    """A claim (of the blog, of a paper) turned into a number and a verdict."""

    id: str  # "C1"
    statement: str  # the claim, in the source's words
    quantity: str  # what was measured
    value: str  # the measurement with its uncertainty, e.g. "12.3 [10.1, 14.5] (95% CI)"
    verdict: Verdict
    rule: str  # how the verdict follows from the value


@dataclass(frozen=True)
class Run(Generic[C]):
    """One run directory, read: what every analysis and report starts from."""

    dir: Path
    experiment: str  # config.json["experiment"]
    config: C  # the experiment's Config, as the run was (last) started
    meta: dict[str, Any]  # the rest of config.json: data, data_fingerprint, torch, bnlab, ...
    records: list[dict[str, Any]]  # the metric records of metrics.jsonl (events left out)
    events: list[dict[str, Any]] = field(default_factory=list)  # e.g. {"event": "failed", ...}

    @property
    def data(self) -> str:
        """What the run trained on (config.json["data"]), or "" where not recorded."""
        return str(self.meta.get("data", ""))


def load_run(run_dir: str | Path, config: type[C], experiment: str | None = None) -> Run[C]:
    """Read ``run_dir`` as a run of an experiment whose Config is ``config``.

    Raises:
        ValueError: not a run directory, a run of another experiment (when ``experiment`` is
            given), or a config.json this version cannot read; each names the file.
    """
    run_dir = Path(run_dir)
    raw = read_config(run_dir)
    if experiment is not None and raw.get("experiment") != experiment:
        raise ValueError(
            f"{run_dir / 'config.json'}: a {raw.get('experiment')!r} run, not {experiment!r}"
        )
    try:
        cfg = config_from_dict(config, raw["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{run_dir / 'config.json'}: {exc}") from None
    meta = {k: v for k, v in raw.items() if k not in ("experiment", "config")}
    lines = read_jsonl(run_dir / "metrics.jsonl")
    records = [r for r in lines if "event" not in r]
    events = [r for r in lines if "event" in r]
    return Run(run_dir, str(raw["experiment"]), cfg, meta, records, events)
