"""``python -m atriggers.testing.conformance REQUEST``: one child process of the
storage suite's cross-process test (see `StorageConformance`)."""

import sys

from .storage import _child_main

if __name__ == "__main__":
    _child_main(sys.argv[1])
