"""Reference implementations used only by the tests and the benchmarks (as detectron2 keeps its
own in ``detectron2.utils.testing``): other libraries' encoders to compare against
(``references``), HILA's first, unfold/gather formulation (``hila_reference``), and the check
of this machine's bf16 kernels against float32 (``kernel_audit``). Nothing in training or
inference imports this package.
"""
