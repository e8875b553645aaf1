"""Field types for experiment configs that read well on the command line.

tyro derives each experiment's flags from its Config dataclass (docstrings become --help);
these annotations make list-valued fields take one comma-separated value, as in
``--seeds 0,1,2`` or ``--variants plain,init-bn``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Annotated, Any

import tyro

__all__ = ["FloatList", "IntList", "StrList", "choice_list"]


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _spec(metavar: str, parse: Callable[[str], Any]) -> tyro.constructors.PrimitiveConstructorSpec:
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar=metavar,
        instance_from_str=lambda args: tuple(parse(t) for t in _split(args[0])),
        is_instance=lambda x: isinstance(x, tuple),
        str_from_instance=lambda x: [",".join(str(v) for v in x)],
    )


IntList = Annotated[tuple[int, ...], _spec("INT,INT,...", int)]
FloatList = Annotated[tuple[float, ...], _spec("FLOAT,FLOAT,...", float)]
StrList = Annotated[tuple[str, ...], _spec("A,B,...", str)]


def choice_list(literal: Any) -> tyro.constructors.PrimitiveConstructorSpec:
    """The parser of a comma-separated list of a Literal's values, for
    ``Annotated[tuple[Lit, ...], choice_list(Lit)]``: ``--inits small,he``. The choices come
    from the Literal alone; any other value is a parse error naming them."""
    allowed = tuple(str(a) for a in typing.get_args(literal))

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return _spec("{" + ",".join(allowed) + "},...", parse)
