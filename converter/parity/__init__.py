"""Parity: does a converted model compute what the TensorFlow model computes, and if not, where
does it stop doing so?

**The verdict is float64.** The TF reference is rewritten to float64 (``tf_float64``: variables
folded from our own reading of the weights, training branches pruned, float32 retyped to
float64, FusedBatchNorm expanded) and our PyTorch model is cast to float64; both keep the
float32-rounded constants of the float32 model (REFERENCE §7). Both get the same seeded
N(0, 1) inputs (or real images). Without float32 rounding noise, a correct conversion differs
by about 1e-14 of the output's scale, a wrong one (one conv's weights off by 1e-6) by 1e-7, on
any CPU. The gate, per output: ``max |TF64 - PT64| / max |TF64| <= tolerance`` (1e-10).

The float32 figures are reported beside it, for information: L2 and max abs of TF32 - PT32,
min cosine, and the **noise ratio** ``L2(TF32 - PT32) / sqrt(L2(TF32 - TF64)^2 +
L2(PT32 - PT64)^2)``: the float32 difference over the float32 noise both sides are expected to
add (each side's distance from its own float64 run), about 1 for a correct conversion on any
CPU. Float64 runs cost more: by default the first ``float64_inputs`` (8) of the inputs run in
float64 as well, all of them in float32; the float32 noise ratio is taken over those 8.

Per-layer localisation (``per_layer=True``) compares, in float64, every end point of the
architecture record (upstream tensor names, our module paths) in network order, and names the
first one whose relative max abs difference exceeds the gate: an error enters the network
there, later layers only carry it.

The outputs compared are the end points our model returns (found by identity of the tensors
its forward returns with its modules' outputs), plus the record's logits end point when both
sides have logits (our logits module applied to the end point before the model output).

Running the TF side imports and runs the user's graph: a graph is code. TensorFlow and torch
are imported inside functions only.
"""

from __future__ import annotations

from facenet_convert.converter.parity.figures import (
    DEFAULT_TOLERANCE,
    Divergence,
    Figures,
    Gate,
    ParityReport,
    locate_divergence,
)
from facenet_convert.converter.parity.inputs import (
    ANY_SIZE_INPUT,
    IMAGE_SUFFIXES,
    build_torch_model,
    detect_model,
    image_batches,
    image_files,
    input_size,
    random_batches,
    weights_choice,
)
from facenet_convert.converter.parity.run import (
    DEFAULT_FLOAT64_INPUTS,
    MODELS,
    ONNX_TOLERANCE,
    run_parity,
)

__all__ = ["ANY_SIZE_INPUT", "DEFAULT_FLOAT64_INPUTS", "DEFAULT_TOLERANCE", "IMAGE_SUFFIXES",
           "MODELS", "ONNX_TOLERANCE", "Divergence", "Figures", "Gate", "ParityReport",
           "build_torch_model", "detect_model", "image_batches", "image_files", "input_size",
           "locate_divergence", "random_batches", "run_parity", "weights_choice"]
