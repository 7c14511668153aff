"""Reference implementations used only by the tests and the benchmarks (as detectron2 keeps its
own in ``detectron2.utils.testing``): other libraries' encoders to compare against
(``references``) and HILA's first, unfold/gather formulation (``hila_reference``). Nothing in
training or inference imports this package.
"""
