"""What users call on top of the foundations: the ``bench`` command line, its subcommands, sweeps
and the throughput benchmark. Nothing in ``benchmark/`` outside this package, nor in ``methods/``
or ``tasks/``, imports from here."""
