"""The ``refinery`` command line for people running the stack."""
