"""Benchmarks that print ratios against a reference measured in the same run.

``python -m bench.serve``, ``python -m bench.train`` and ``python -m bench.publish``; each prints
a table (measured, reference, ratio, target, met) and exits 0. ``BENCHMARKS.md`` records the
figures and the commands that produced them.
"""
