"""core: the foundation every part of tinyship stands on. TensorFlow-free at import.

What more than one part needs lives here, and only here:

- `artifacts`, `manifest`: the artifact contract (one directory + a typed manifest per variant);
- `tasks`: task specs (labels, input kind);
- `data`: dataset readers; `preprocessing`: the one preprocessing implementation that training
  and serving share;
- `runtime`: ONNX Runtime sessions; `runners`: one interface over Keras, LiteRT and ONNX Runtime;
- `measure`: timing loops; `modelstats`: sizes, parameters and MACs of a variant;
- `evaluate`: test inputs of a variant and accuracy of a runner on them;
- `export`: Keras -> ONNX/TFLite with parity checks;
- `tf_setup`: the one module that imports TensorFlow (Keras 2 via tf_keras).

Imports run one way: `core` <- `trainer` <- `compress`; `core` <- `benchmarks`; `core` <- `serve`.
Modules that need TensorFlow import it from `core.tf_setup` inside the function that needs it.
"""
