"""Test suite of decay."""
