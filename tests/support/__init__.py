"""Helpers shared by the tests and the benchmarks: tiny datasets, hand-built SavedModels, certificates.

Imported as ``tests.support.<module>`` (the repo root is on sys.path under pytest and for
``python -m bench.<x>`` from the repo root).
"""
