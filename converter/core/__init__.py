"""Bottom layer: typed errors, atomic outputs, hashing, protobuf wire decoding, version.

Nothing here imports another layer of the toolkit, numpy's heavier users, torch or TensorFlow.
"""
