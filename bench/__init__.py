"""Benchmarks: ``python -m bench [names or patterns...]`` (see bench/__main__.py).

Each benchmark is a module ``bench/<name>.py`` that either exposes ``run() -> dict`` (figures,
printed as JSON by the runner) or prints its own figures when run as a script. Figures are
ratios against a baseline measured in the same run; record them in docs/performance.md with
the command that produced them.
"""
