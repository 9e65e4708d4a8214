"""Model manager: where models come from (folders, zip archives, the Hugging Face hub) and their checksums.

``catalogue`` lists the known models and records what is installed; ``download`` fetches with resume;
``zenodo`` reads a record's size and md5. The ``models`` job that uses them (list, info, download, verify,
import) is :mod:`backend.jobs.model_manager`.

Nothing here imports torch at import time: fetching and hashing files is independent of what the files hold
(only "models import" loads torch, lazily, to check a folder or convert SkySense).
"""
