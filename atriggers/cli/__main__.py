"""``python -m atriggers.cli``: the ``atriggers`` command."""

from . import console_main

if __name__ == "__main__":
    console_main()
