"""TF 2.x compatibility layer over davidsandberg's facenet (pinned wheel) and its builders.

Submodules import TensorFlow lazily: ``compat`` (load the upstream modules), ``build``
(upstream-graph checkpoint folders), ``reference`` (run the TF side of a comparison).
Nothing in ``converter`` or ``models`` imports this package.
"""
