"""Conversion of official checkpoints into detectron2 checkpoints of hila_d2 models."""
