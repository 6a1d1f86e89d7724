"""`python -m gridded.cli`: the same as the `gridded` command."""

from . import main

if __name__ == "__main__":
    main()
