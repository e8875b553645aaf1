"""bnlab: batch normalization from first principles, and a lab that tests every claim.

The library (``pip install bnlab``: torch and numpy): :mod:`bnlab.reference` (NumPy oracle),
:mod:`bnlab.functional` (the math, hand-derived backward), :mod:`bnlab.kernels` (compiled
renditions), :mod:`bnlab.nn` (modules), :mod:`bnlab.doctor` (misuse checks). The lab on top
(``pip install 'bnlab[lab]'``) is :mod:`bnlab.lab`.
"""

__version__ = "0.1.0"

# The compiled kernels register themselves into bnlab.functional's dispatch on import; importing
# them here means every use of the library (any bnlab.* import runs this file first) has them.
from bnlab import kernels as _kernels  # noqa: F401
