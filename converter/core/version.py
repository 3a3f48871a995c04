"""The toolkit's version, at the bottom layer so that every module may stamp it."""

__version__ = "0.3.0"
