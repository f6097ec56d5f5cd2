"""The storage conformance suite, run against every built-in backend (the
`storage_factory` fixture in conftest.py is parametrized over them)."""

from atriggers.testing.conformance import StorageConformance


class TestStorageConformance(StorageConformance):
    pass
