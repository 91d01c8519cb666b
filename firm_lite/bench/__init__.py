"""The accuracy-vs-speed benchmark (``firm-lite bench``).

:mod:`firm_lite.bench.worker` measures one variant in its own process (so peak memory is that
variant's alone); :mod:`firm_lite.bench.runner` runs the workers, measures the reference-style
baseline in the same run, joins drift figures from a calibration report and writes the results
JSON; :mod:`firm_lite.bench.report` turns that saved JSON into the markdown table and the
Pareto plot.
"""
