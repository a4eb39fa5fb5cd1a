"""Assemble crops and table records into a cohort directory, atomically, with a report.

Every source produces `Entry`s (one manifest row each) and crop requests; this module drops
entries whose crop was skipped (and the other half of their pair), assigns patient-level
splits, optionally hashes the ids, and writes the cohort, `ingest_report.json`,
`skipped.csv` (with --on-error skip) and `run_info.json` into it before it is published.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from namd.cohort.ehr import EHR
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.parallel import CropRequest, CropResult
from namd.cohort.store import CohortWriter, assign_splits
from namd.run.errors import UsageError
from namd.run.provenance import PathPolicy, atomic_write_json, write_run_info

REPORT = "ingest_report.json"
HASH_KEY_ENV = "NAMD_HASH_KEY"
# The shortest key accepted: 16 bytes (128 bits, the usual floor for a symmetric secret; NIST
# SP 800-107 asks an HMAC key for at least the security wanted). Patient ids are few and
# guessable, so whoever has or can search the key can hash every candidate id and match them:
# an empty or short key makes the hashes reversible.
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class Entry:
    """One row of the output manifest; `key` names the crop (several rows may share one)."""

    key: str
    patient_id: str
    nodule_id: str
    kind: str
    timepoint: int
    label: int | None
    ehr: EHR
    pair_id: str = ""
    split: str | None = None
    image: str = ""
    record: str = ""
    note: str = ""


@dataclass
class Plan:
    """What a source asks for: the crops to cut, and how to turn cut crops into manifest rows
    (NLST pairs by crop position, so rows can depend on the crops)."""

    requests: list[CropRequest]
    entries: Callable[[dict[str, CropResult]], list[Entry]]
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fixed(cls, requests: list[CropRequest], entries: list[Entry],
              report: dict[str, Any]) -> Plan:
        """A plan whose rows do not depend on the crops."""
        return cls(requests, lambda _results: entries, report)


class IdHasher:
    """Keyed hashes (HMAC-SHA256, 16 hex digits) of the ids the user supplied.

    The key comes from $NAMD_HASH_KEY, so that cohorts prepared separately stay linkable;
    without it a random key is used and never stored (the ids cannot be traced back). A key
    that is set but weak (`check_key`) is refused before any work, never used.
    """

    def __init__(self, key: str | None = None):
        key = key if key is not None else os.environ.get(HASH_KEY_ENV)
        self.keyed = key is not None
        self._key = check_key(key) if key is not None else os.urandom(32)

    def __call__(self, value: str) -> str:
        """The hashed id (empty stays empty)."""
        if not value:
            return value
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:16]


def check_key(key: str) -> bytes:
    """The key's bytes; an empty key, one under MIN_KEY_BYTES bytes or one character repeated
    is a one-line UsageError (a guessable key makes the hashes reversible by enumeration)."""
    raw = key.encode()
    if len(raw) < MIN_KEY_BYTES or len(set(key)) < 2:
        what = ("is empty" if not raw else "is one character repeated" if len(set(key)) < 2
                else f"is {len(raw)} bytes, under the {MIN_KEY_BYTES} a key needs")
        raise UsageError(f"${HASH_KEY_ENV} {what}: whoever guesses it can recompute the hashed "
                         f"ids — set it "
                         f"to a secret of at least {MIN_KEY_BYTES} random bytes (e.g. `python -c "
                         f"\"import secrets; print(secrets.token_hex(32))\"`), or unset it for a "
                         f"random key that is never stored")
    return raw


def drop_incomplete(entries: list[Entry], results: dict[str, CropResult],
                    errors: ErrorLog) -> list[Entry]:
    """Entries whose crop exists; a pair loses both rows when one crop is missing."""
    missing = {e.key for e in entries if e.key not in results}
    broken = {e.pair_id for e in entries if e.pair_id and e.key in missing}
    kept = []
    for e in entries:
        if e.key in missing:
            continue
        if e.pair_id in broken:
            errors.note(e.record, f"the other crop of pair {e.pair_id} was skipped", "pair incomplete")
            continue
        kept.append(e)
    return kept


def with_splits(entries: list[Entry], fractions: tuple[float, float, float], seed: int) -> list[Entry]:
    """User splits when every entry has one, else patient-level random splits."""
    if entries and all(e.split for e in entries):
        return entries
    splits = assign_splits([e.patient_id for e in entries], fractions, seed)
    return [replace(e, split=splits[e.patient_id]) for e in entries]


def write_cohort(entries: list[Entry], results: dict[str, CropResult], *, out: Path, config: Any,
                 source: str, errors: ErrorLog, units: str = "HU", hasher: IdHasher | None = None,
                 overwrite: bool = False, report: dict[str, Any] | None = None,
                 extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the cohort atomically (nothing appears under `out` unless all succeeds)."""
    entries = with_splits(drop_incomplete(entries, results, errors),
                          tuple(config.ingest.split_fractions), config.ingest.split_seed)
    if not entries:
        first = errors.lines(limit=1)[0].strip() if errors.skipped else "no records in the input"
        raise IngestError(f"no crops left to write ({len(errors.skipped)} record(s) skipped; "
                          f"first: {first})", category="empty")
    h = hasher or (lambda v: v)
    writer = CohortWriter(out, config.data.crop_size, config.data.pixel_spacing_mm, units=units,
                          source=source, overwrite=overwrite,
                          extra_meta={"hashed_ids": hasher is not None, **(extra_meta or {})})
    try:
        for e in entries:
            res = results[e.key]
            image = "" if hasher is not None else e.image
            prov = res.provenance(image) + (f" | {e.note}" if e.note else "")
            writer.add(res.crop, patient_id=h(e.patient_id), nodule_id=h(e.nodule_id), kind=e.kind,
                       split=e.split or "train", label=e.label, ehr=e.ehr, pair_id=h(e.pair_id),
                       timepoint=e.timepoint, source=source, provenance=prov,
                       flags=",".join(res.flags))
        extra = _without_details(report or {}) if hasher is not None else dict(report or {})
        summary = _report(entries, results, errors, source, units, hasher, extra)
        atomic_write_json(writer.tmp / REPORT, summary)
        if errors.policy == "skip":
            errors.write(writer.tmp, redact=hasher is not None,
                         hash_path=PathPolicy(Path.cwd(), hasher).path if hasher else None)
        write_run_info(writer.tmp, config, config.ingest.split_seed, stage="cohort", complete=True,
                       source=source, units=units, n_crops=len(entries))
        writer.close()
    except BaseException:
        if writer.tmp.exists():
            writer.abort()
        raise
    return summary


def _without_details(report: dict[str, Any]) -> dict[str, Any]:
    """The report less its `details` entries (they name patients), for --hash-ids."""
    return {k: _without_details(v) if isinstance(v, dict) else v
            for k, v in report.items() if k != "details"}


def _report(entries: list[Entry], results: dict[str, CropResult], errors: ErrorLog, source: str,
            units: str, hasher: IdHasher | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Counts of what was written and skipped, the volumes used and source-specific notes."""
    kinds = Counter(e.kind for e in entries)
    used = {e.key for e in entries}
    flags = Counter(f for k in used for f in results[k].flags)
    volumes = sorted({(("" if hasher else e.image), results[e.key].volume) for e in entries})
    return {
        "source": source, "units": units, "crops": len(entries),
        "pairs": kinds.get("baseline", 0), "unpaired": kinds.get("unpaired", 0),
        "patients": len({e.patient_id for e in entries}),
        "splits": dict(Counter(e.split for e in entries)),
        "labels": {str(k): v for k, v in Counter(e.label for e in entries).items()},
        "flags": dict(flags), "on_error": errors.policy,
        "skipped": len(errors.skipped), "skipped_by_category": errors.counts(),
        "hashed_ids": hasher is not None,
        "hash_key": None if hasher is None else ("$" + HASH_KEY_ENV if hasher.keyed else "random, not stored"),
        "volumes": [{"image": img, "volume": vol} for img, vol in volumes], **extra,
    }
