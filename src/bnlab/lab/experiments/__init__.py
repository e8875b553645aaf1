"""The lab's experiments: one subpackage each, all following :mod:`bnlab.lab.experiments.protocol`.

``bnlab.lab.experiments.EXPERIMENTS`` maps each command name to its
:class:`~bnlab.lab.experiments.protocol.Experiment`; it is loaded on first use, so importing one
experiment does not import the others.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXPERIMENTS"]


def __getattr__(name: str) -> Any:
    if name == "EXPERIMENTS":
        from bnlab.lab.experiments.registry import EXPERIMENTS

        return EXPERIMENTS
    raise AttributeError(f"module 'bnlab.lab.experiments' has no attribute {name!r}")
