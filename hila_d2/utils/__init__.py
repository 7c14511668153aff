"""Tools built on the models (not needed to train or evaluate them)."""
