"""`python -m gridded.cli`: the same as the `gridded` command."""

from . import main

main()
