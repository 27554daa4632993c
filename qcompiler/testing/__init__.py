"""Test support shared by the test suite and the op definitions' test hooks."""
