"""The measurements behind ``tools/benchmark.py`` (one module per sub-command) and the published
numbers that ``tools/analyze_model.py --published`` compares with."""
