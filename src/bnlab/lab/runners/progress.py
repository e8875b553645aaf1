"""Live progress of a run's jobs in the terminal (tqdm on stderr)."""

from __future__ import annotations

import sys
from typing import Any

from bnlab.lab.jobs import JobState, unit_steps

__all__ = ["Bars"]


class Bars:
    """A bar per job with its status text (one overall bar when there are many jobs).

    Positions are in steps: ``job.total * job.unit_steps`` per job. Workers report with
    :func:`bnlab.lab.jobs.emit`; finished chunks move the bar to the chunk's end.
    """

    MAX_BARS = 10  # more jobs than this get one overall bar: a screen of bars helps nobody

    def __init__(self, states: list[JobState]) -> None:
        from tqdm.auto import tqdm  # here: slow to import, and only runs need it

        self.scale = {js.key: unit_steps(js.job) for js in states}
        self.seen = {js.key: js.done * self.scale[js.key] for js in states}
        self.total = {js.key: int(js.job.total) for js in states}
        self.finished = sum(1 for js in states if js.remaining == 0)
        self.n = len(states)
        width = max((len(js.key) for js in states), default=1)
        self.width = min(width, 40)
        common: dict[str, Any] = dict(
            unit="step", leave=True, dynamic_ncols=True, mininterval=0.5, file=sys.stderr
        )
        self.bars: dict[str, Any] = {}
        self.shared: Any = None
        if self.n > self.MAX_BARS:
            self.shared = tqdm(
                total=sum(self.total[k] * self.scale[k] for k in self.total),
                initial=sum(self.seen.values()),
                desc=self._overall(),
                **common,
            )
            return
        for pos, js in enumerate(states):
            self.bars[js.key] = tqdm(
                total=self.total[js.key] * self.scale[js.key],
                initial=self.seen[js.key],
                desc=self._desc(js.key, js.done),
                position=pos,
                **common,
            )

    def _overall(self) -> str:
        return f"{self.finished}/{self.n} jobs done"

    def _desc(self, key: str, unit: int) -> str:
        return f"{key:<{self.width}} {unit:>4}/{self.total[key]}"

    def _advance(self, key: str, pos: int) -> Any:
        bar = self.shared if self.shared is not None else self.bars[key]
        bar.update(max(0, pos - self.seen[key]))
        self.seen[key] = max(self.seen[key], pos)
        return bar

    def event(self, event: dict[str, Any]) -> None:
        key = event.get("key")
        if key not in self.seen:
            return
        bar = self._advance(key, int(event["step"]))
        text = str(event.get("text", ""))
        if self.shared is not None:
            bar.set_postfix_str(f"{key} {text}", refresh=False)
        else:
            unit = self.seen[key] // self.scale[key]
            bar.set_description_str(self._desc(key, unit), refresh=False)
            bar.set_postfix_str(text, refresh=False)

    def chunk_done(self, js: JobState) -> None:
        bar = self._advance(js.key, js.done * self.scale[js.key])
        if js.remaining == 0:
            self.finished += 1
            if self.shared is not None:
                bar.set_description_str(self._overall())
        if self.shared is None:
            bar.set_description_str(self._desc(js.key, js.done), refresh=False)
        if js.failed:
            if self.shared is None:
                bar.set_postfix_str("FAILED")
            bar.write(f"{js.key}: {js.failed}")

    def close(self) -> None:
        for bar in [*self.bars.values(), self.shared]:
            if bar is not None:
                bar.close()
