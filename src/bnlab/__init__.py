"""bnlab: batch normalization from first principles, and a lab that tests every claim.

The library (``pip install bnlab``: torch and numpy): :mod:`bnlab.reference` (NumPy oracle),
:mod:`bnlab.functional` (the math, hand-derived backward), :mod:`bnlab.kernels` (compiled
renditions), :mod:`bnlab.nn` (modules), :mod:`bnlab.doctor` (misuse checks). The lab on top
(``pip install 'bnlab[lab]'``) is :mod:`bnlab.lab`.
"""

import itertools as _itertools
import sys as _sys

__version__ = "0.1.0"


def _started_as_command() -> bool:
    """True in the ``bnlab`` command's own process (the console script, ``python -m bnlab``,
    ``python -m bnlab.doctor``, torchrun's ranks), where its imports run before its ``main``."""
    if _sys.argv and _sys.argv[0].rsplit("/", 1)[-1] == "bnlab":
        return True
    argv = getattr(_sys, "orig_argv", [])
    return any(a == "-m" and b.split(".")[0] == "bnlab" for a, b in _itertools.pairwise(argv))


# The compiled kernels register themselves into bnlab.functional's dispatch on import; importing
# them here means every use of the library (any bnlab.* import runs this file first) has them.
# In the bnlab command this import (torch's, about a second) comes before its main() can catch
# anything: a Ctrl-C meanwhile ends it quietly (130), a bad BNLAB_BACKEND in one line (2).
# Imported from anyone else's code, both raise as usual.
try:
    from bnlab import kernels as _kernels  # noqa: F401
except KeyboardInterrupt:
    if not _started_as_command():
        raise
    raise SystemExit(130) from None
except ValueError as _exc:  # BNLAB_BACKEND names no backend
    if not _started_as_command():
        raise
    print(f"bnlab: error: {_exc}", file=_sys.stderr)
    raise SystemExit(2) from None
