"""Memory as a managed resource: model footprints from their files (footprint.py, files.py),
the fit of budgets, layers and offload plans (fit.py, pure) and which models a worker keeps
loaded (residency.py, pure: LRU eviction and keep_alive). Imports nothing that imports it."""
