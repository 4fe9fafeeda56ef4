"""The composition root: settings, the command line, process lifecycle, the local stack."""
