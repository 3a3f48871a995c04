"""Subcommands of ``facenet-convert``: one module each, added to the group in ``cli.py``."""
