"""``python -m converter``: the same command line as the ``facenet-convert`` script."""

from facenet_convert.converter.cli import main

main()
