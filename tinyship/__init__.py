"""tinyship's Python API, for notebooks: the command lines' steps as functions.

    import tinyship

    base = tinyship.import_model("digits.keras", "photos/", task="digits")
    tinyship.compress("digits", recipe="default", budget=1.0)   # derive variants, select one
    bench = tinyship.benchmark(["digits"], quick=True)          # accuracy, size, latency
    served = tinyship.selected("digits")                        # what `serve` will run

Every function takes `artifacts` (default: $ARTIFACTS_DIR, else `artifacts`) and returns the
variants or records the command line would have written; nothing here is only in the API.
This package sits above the others (it imports trainer, compress and benchmarks), so that none
of them imports another only to offer a notebook one call.
"""
from tinyship.api import (benchmark, compress, import_model, selected, train,  # noqa: F401
                          variants)
