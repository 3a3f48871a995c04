"""Training in PyTorch with TF1's semantics: continue an upstream facenet run exactly.

``optimizers`` (TF1's update rules and slots), ``losses`` (upstream's losses and the center
update), ``averages`` (EMA with ``num_updates``, loss averages), ``schedule`` (upstream's
learning-rate file), ``step`` (one training step in upstream's order), ``resume`` (a TF
training checkpoint onto the model, optimizer and EMA, accounted both ways) and ``finetune``
(the dataset loop behind ``facenet-convert finetune``). Nothing here imports TensorFlow.
"""
