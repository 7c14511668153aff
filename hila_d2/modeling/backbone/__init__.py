"""backbone modules, imported for registration by hila_d2.modeling."""
