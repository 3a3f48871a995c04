"""``python -m converter``: the same command line as the ``facenet-convert`` script."""

from converter.cli import main

main()
