"""What the repository measures and tests hila_d2 against, kept out of the installed package
(pyproject installs ``hila_d2*`` only; nothing in training or inference imports this): the
measurements behind ``tools/benchmark.py`` (one module per sub-command) and the published numbers
that ``tools/analyze_model.py --published`` compares with, their timing, memory and FLOP helpers
(``profiling``), and the reference implementations of the equivalence tests and the benchmarks:
other libraries' encoders (``references``) and HILA's first, unfold/gather formulation
(``hila_reference``). Imported from the repository root: the tools put it on ``sys.path``, and
pyproject's ``pythonpath`` does for the tests."""
