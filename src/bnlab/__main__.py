"""`python -m bnlab` (and `torchrun -m bnlab`): the same as the bnlab command."""

import sys

from bnlab.lab.cli import main

sys.exit(main())
