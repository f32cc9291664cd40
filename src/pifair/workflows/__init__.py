"""Run-folder workflows behind the CLI commands that build on a trained run (``--from RUN``)."""
