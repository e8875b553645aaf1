"""Reports: sections (figures, tables, claims, prose) laid out as one self-contained
report.html (:mod:`.html`) or report.md (:mod:`.markdown`), and the plots they show
(:mod:`.plots`). Experiments say what to show; this package only renders it. Which report a
run directory gets is :mod:`bnlab.lab.experiments.reports`' business.
"""
