"""Tests of the `regbench` client commands (client/), against a mocked HTTP server."""
