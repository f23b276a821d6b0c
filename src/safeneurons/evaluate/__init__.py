"""Evaluation: generation (``generate``), judges (``judges``), ASR tables (``asr``), agreement,
capability benchmarks, the lm-eval bridge and over-refusal. Submodules are imported on use, so
importing this package (e.g. for ``asr``) loads no torch."""
