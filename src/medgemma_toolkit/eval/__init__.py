"""Evaluation: tasks as data (`tasks/*.yaml`), readers for the public formats, parsers, metrics with bootstrap
intervals, a resumable batched runner, reports and run comparison. Entry point: `run_eval(mg, EvalOptions(...))`."""
