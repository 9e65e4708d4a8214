"""The hashed lock files of ``requirements/`` (written by ``make lock``): one pinned package per entry.

pip's format as ``uv pip compile --generate-hashes`` writes it: ``name==version ; marker`` followed by one
``--hash=sha256:...`` per wheel (and source archive) the index lists for that version, continued with backslashes.
Plain Python: the plugin reads these files in QGIS's interpreter, where neither pip nor packaging is importable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Tuple

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;]+)\s*(?:;(?P<marker>.*))?$")
_HASH = re.compile(r"^--hash=sha256:(?P<digest>[0-9a-f]{64})$")


class LockError(ValueError):
    """A lock file entry that pip's ``--require-hashes`` mode would refuse."""


@dataclass(frozen=True)
class LockedRequirement:
    """One pinned package: its canonical name, version, environment marker and sha256 digests."""

    name: str
    version: str
    marker: str
    hashes: Tuple[str, ...]

    def as_line(self) -> str:
        """The entry as one requirements-file line pip reads back."""
        marker = f" ; {self.marker}" if self.marker else ""
        return f"{self.name}=={self.version}{marker} " + " ".join(f"--hash=sha256:{h}" for h in self.hashes)


def canonical_name(name: str) -> str:
    """PEP 503's normalised name (``PyYAML`` and ``pyyaml``, ``typing_extensions`` and ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _logical_lines(text: str) -> List[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_lock(text: str, source: str = "the lock file") -> List[LockedRequirement]:
    """Every entry of a lock file; a LockError for an entry without ``==`` or without a sha256 hash."""
    entries = []
    for line in _logical_lines(text):
        requirement, *options = re.split(r"\s+(?=--)", line)
        match = _PIN.match(requirement.strip())
        if match is None:
            raise LockError(f"{source}: {requirement!r} is not pinned with '=='; run 'make lock'")
        hashes = []
        for option in options:
            found = _HASH.match(option.strip())
            if found is None:
                raise LockError(f"{source}: {match['name']}: unexpected option {option.strip()!r}")
            hashes.append(found["digest"])
        if not hashes:
            raise LockError(f"{source}: {match['name']}=={match['version']} has no sha256 hash; run 'make lock'")
        entries.append(LockedRequirement(canonical_name(match["name"]), match["version"],
                                         (match["marker"] or "").strip(), tuple(hashes)))
    return entries
