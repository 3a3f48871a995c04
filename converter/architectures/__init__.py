"""The architecture records: one module per architecture family, each exporting ``RECORDS``.

Adding an architecture: a model file in ``models/``, a mapping table in ``converter/tables/``,
a record module here, and a test. :mod:`facenet_convert.converter.registry` finds every module
of this package by itself; nothing else lists architectures.
"""
