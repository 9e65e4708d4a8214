"""Terrafuse backend: models and pixels, headless.

This package never imports qgis or Qt. It runs as a worker process under the plugin
(``python -m backend.worker``) and as a command line (``python -m backend <job>``).
The modules :mod:`backend.jobs`, :mod:`backend.protocol`, :mod:`backend.progress` and
:mod:`backend.errors` use the standard library only, so that the plugin may read the job
schemas without importing numpy or torch.
"""

__version__ = "0.1.0"
