"""The ``jcm`` command: one entry point with a subcommand per job."""
