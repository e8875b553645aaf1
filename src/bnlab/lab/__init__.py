"""bnlab's lab: experiments that test the blog's claims with numbers, on top of the library.

Installed with ``pip install 'bnlab[lab]'``. The library below it (:mod:`bnlab.functional`,
:mod:`bnlab.kernels`, :mod:`bnlab.nn`, :mod:`bnlab.doctor`) never imports from here.
"""
