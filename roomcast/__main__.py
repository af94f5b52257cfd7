"""``python -m roomcast``: the same as the ``roomcast`` command."""

from roomcast.cli import main

if __name__ == "__main__":
    main()
