"""Model manager: where models come from (folders, zip archives, the Hugging Face hub) and their checksums.

``catalogue`` lists the known models and records what is installed; ``download`` fetches with resume;
``zenodo`` reads a record's size and md5; ``manager`` is the ``models`` job (list, info, download, verify,
import).

Nothing here imports torch at import time: fetching and hashing files is independent of what the files hold
(only "models import" loads torch, lazily, to check a folder or convert SkySense).
"""
