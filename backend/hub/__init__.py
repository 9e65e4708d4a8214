"""Model manager: where models come from (folders, zip archives, the Hugging Face hub) and their checksums.

Nothing here imports torch: fetching and hashing files is independent of what the files hold.
"""
