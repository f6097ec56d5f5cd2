"""Tools for testing code built on atriggers: fixtures, assertions, conformance."""
