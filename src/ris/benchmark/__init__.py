"""`ris bench`: the same mixed workload against the traditional and the isolated configuration.

configs.py   the service configurations compared (traditional, shared, isolated; CPU or GPU)
workload.py  what the load generator sends (rates, sizes), with CPU, GPU and quick presets
loadgen.py   the load generator, a separate process: drives one phase, writes raw samples
summary.py   samples -> per-lane figures; repetitions -> medians, spreads and ratios (pure)
report.py    the JSON, the markdown table and the PNG chart
run.py       the orchestration: start each service, run the phases, show progress
"""
