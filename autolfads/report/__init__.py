"""The static HTML report of a run, from storage alone (`autolfads report`).

build    read the run's records and best outputs, write the report
figures  the figures, drawn from plain data (no storage, no torch)
html     the one page, figures as PNG files beside it
"""
