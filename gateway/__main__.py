"""``python -m roomcast.gateway APP [options]``: the same as the ``gateway`` command."""

from roomcast.gateway.cli import main

if __name__ == "__main__":  # worker processes re-import this module under another name
    main()
