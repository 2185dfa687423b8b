"""The ``eqcryo`` command line: one verb per task (see ``eqcryo --help``)."""
