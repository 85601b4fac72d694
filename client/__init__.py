"""The ``regbench`` command line."""
