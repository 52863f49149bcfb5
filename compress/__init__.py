"""compress package (import-light: no TensorFlow at import time)."""
