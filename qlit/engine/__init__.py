"""The engine under every qlit command: build a run from a config, run jobs serially or on Ray, score predictions.

- `qlit.engine.build`: `build_run` turns a parsed config into a model, data module and trainer (`RunBuilder`,
  the LightningCLI the ``qlit`` command extends).
- `qlit.engine.parser`: the config parser, whose errors are one line naming the key at fault.
- `qlit.engine.predictions`: `predict`, one pass of a model over a split, and the scores computed from it.
- `qlit.engine.runner`: `run_jobs`, the same jobs one after another or as Ray tasks.

Nothing here knows the command line: `qlit.cli` and `qlit.evaluation` call into it.
"""
