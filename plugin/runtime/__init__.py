"""The backend's runtime, seen from the plugin: the GPU, the torch build, the environment, diagnostics.

Plain Python (no Qt, no torch): QGIS tasks wrap these, and the tests run them in either environment.
"""
