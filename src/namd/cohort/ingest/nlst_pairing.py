"""NLST pairs (a nodule at study year y and its appearance at y + 1) and their labels.

NLST has no nodule identity across years (sct_ab_num restarts every year), so:
- with a pairing table (pid, base_yr, base_ab_num, follow_yr, follow_ab_num[, label]) its
  pairs are used as given;
- otherwise the matching rule: for the same participant and consecutive study years, a
  follow-up nodule is a candidate for a baseline nodule when the lobes agree (when both are
  known), their crop centres lie within ingest.pair_max_distance_mm, and their longest
  diameters differ by at most ingest.pair_max_diameter_change_mm (when both are known).
  A pair is made only when the candidate is unique both ways; otherwise the match is
  reported as ambiguous (ingest_report.json) and not used. World coordinates of different
  exams are not registered, so the distance tolerance is loose; a pairing table is better.
Label (unless a user label column gives it): malignant (1) when the participant's first
confirmed lung cancer (cancyr) came no later than the baseline study year +
ingest.label_window_years; benign (0) when can_scr = 0 or cancyr is later; unknown (None)
when can_scr says cancer but cancyr is missing, or both are missing. NLST links cancers to
participants, not nodules: every nodule of a participant with cancer gets the same label.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from namd.cohort.ingest.build import Entry, Plan
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.nlst import (
    STUDY_YEARS,
    Nodule,
    Participant,
    read_abnormalities,
    read_exams,
    read_participants,
    read_positions,
)
from namd.cohort.ingest.parallel import CropRequest, CropResult
from namd.cohort.ingest.tables import cell, parse_id, parse_int, parse_label, read_table

PAIR_COLUMNS = ("pid", "base_yr", "base_ab_num", "follow_yr", "follow_ab_num")


def nlst_label(person: Participant, base_year: int, window: int) -> int | None:
    """The documented label rule from can_scr / cancyr (see the module docstring)."""
    if person.cancyr is not None:
        return int(person.cancyr <= base_year + window)
    if person.can_scr == 0:
        return 0
    return None


def read_pair_table(path: str | Path, nodules: dict[str, Nodule],
                    errors: ErrorLog) -> list[tuple[Nodule, Nodule, int | None, int]]:
    """(baseline, follow-up, label or None, line) from an explicit pairing table."""
    table = read_table(path)
    cols = [table.require(c) for c in PAIR_COLUMNS]
    label_col = table.column("label")
    out, used = [], {}
    for line, row in table.rows():
        try:
            pid = parse_id(table, line, cols[0], cell(row, cols[0]))
            ends = []
            for yr_col, ab_col in ((cols[1], cols[2]), (cols[3], cols[4])):
                yr = parse_int(table, line, yr_col, cell(row, yr_col), allowed=STUDY_YEARS)
                ab = parse_int(table, line, ab_col, cell(row, ab_col))
                key = f"{pid}:T{yr}:{ab}"
                if key not in nodules:
                    raise IngestError(f"no positioned nodule pid {pid} study_yr {yr} sct_ab_num {ab}",
                                      table.path, line, ab_col, category="unknown nodule")
                ends.append(nodules[key])
            base, follow = ends
            if follow.year != base.year + 1:
                raise IngestError(f"follow_yr {follow.year} is not base_yr {base.year} + 1", table.path,
                                  line, cols[3])
            for role, n in (("base", base), ("follow", follow)):
                if (role, n.key) in used:
                    raise IngestError(f"{n.ident} of pid {pid} is a {role} in two pairs (first on line "
                                      f"{used[(role, n.key)]})", table.path, line, f"{role}_ab_num",
                                      category="duplicate id")
                used[(role, n.key)] = line
            out.append((base, follow, parse_label(table, line, label_col, cell(row, label_col)), line))
        except IngestError as err:
            errors.report(err.within(table.path, line))
    return out


def _compatible(a: Nodule, b: Nodule, results: dict[str, CropResult], cfg: Any) -> bool:
    """The rule's tolerances: same lobe, close centres, similar size."""
    if a.lobe is not None and b.lobe is not None and a.lobe != b.lobe:
        return False
    dist = float(np.linalg.norm(np.subtract(results[a.key].centre, results[b.key].centre)))
    if dist > cfg.pair_max_distance_mm:
        return False
    la, lb = a.ehr.SCT_LONG_DIA, b.ehr.SCT_LONG_DIA
    return la is None or lb is None or abs(la - lb) <= cfg.pair_max_diameter_change_mm


def match_by_rule(nodules: list[Nodule], results: dict[str, CropResult],
                  cfg: Any) -> tuple[list[tuple[Nodule, Nodule]], dict[str, Any]]:
    """Pairs by the documented rule, plus a report of ambiguous and unmatched nodules."""
    by_exam: dict[tuple[str, int], list[Nodule]] = defaultdict(list)
    for n in nodules:
        if n.key in results:
            by_exam[(n.pid, n.year)].append(n)
    pairs, ambiguous, unmatched = [], [], 0
    for (pid, year), bases in sorted(by_exam.items()):
        follows = by_exam.get((pid, year + 1), [])
        cand = {a.key: [b for b in follows if _compatible(a, b, results, cfg)] for a in bases}
        back: dict[str, int] = defaultdict(int)
        for found in cand.values():
            for b in found:
                back[b.key] += 1
        for a in bases:
            found = cand[a.key]
            if len(found) == 1 and back[found[0].key] == 1:
                pairs.append((a, found[0]))
            elif found:
                ambiguous.append({"pid": pid, "baseline": a.ident,
                                  "candidates": [b.ident for b in found]})
            else:
                unmatched += 1
    return pairs, {"rule": "same pid, consecutive years, same lobe, within distance and size "
                           "tolerances, unique both ways",
                   "ambiguous": len(ambiguous), "unmatched_baselines": unmatched,
                   "details": {"ambiguous": ambiguous}}


def pair_entries(pairs: list[tuple[Nodule, Nodule, int | None]], people: dict[str, Participant],
                 window: int) -> list[Entry]:
    """Manifest rows of the pairs; a nodule chain T0 -> T1 -> T2 keeps its first id."""
    root: dict[str, str] = {}
    out = []
    for base, follow, label in sorted(pairs, key=lambda p: (p[0].pid, p[0].year, p[0].ab)):
        nodule_id = root.setdefault(base.key, base.ident)
        root[follow.key] = nodule_id
        if label is None:
            label = base.user_label if base.user_label is not None else nlst_label(
                people[base.pid], base.year, window)
        pair_id = f"{base.pid}:{base.ident}>{follow.ident}"
        for n, kind in ((base, "baseline"), (follow, "followup")):
            note = f"NLST abnormality {n.ident}" + (f", {n.note}" if n.note else "")
            out.append(Entry(n.key, n.pid, nodule_id, kind, n.year, label, n.ehr, pair_id=pair_id,
                             image=n.image_text, record=f"pid {n.pid} {n.ident}", note=note))
    return out


def read_nlst(prsn: str | Path, abn: str | Path, positions: str | Path, images: str | Path,
              errors: ErrorLog, cfg: Any, exams: str | Path | None = None,
              pairs: str | Path | None = None, label_column: str | None = None) -> Plan:
    """The NLST plan: crops for every positioned nodule, then pairs and labels."""
    images = Path(images)
    if not images.is_dir():
        raise IngestError("image folder not found", images, category="unreadable file")
    _, people = read_participants(prsn, errors)
    nodules, counts = read_abnormalities(abn, people, errors, label_column)
    exam_paths = read_exams(exams, images, errors)
    placed = read_positions(positions, nodules, exam_paths, images, errors, cfg.coordinate_frame)
    explicit = read_pair_table(pairs, placed, errors) if pairs is not None else None
    requests = [CropRequest(n.key, n.image, n.position, n.series_uid, str(positions), n.pos_line,
                            f"pid {n.pid} {n.ident}") for n in placed.values()]
    report: dict[str, Any] = {**counts, "participants": len(people), "nodules": len(nodules),
                              "nodules_without_position": len(nodules) - len(placed),
                              "label_rule": f"cancyr <= baseline study_yr + {cfg.label_window_years}"}

    def entries(results: dict[str, CropResult]) -> list[Entry]:
        if explicit is not None:
            chosen = [(a, b, label) for a, b, label, _ in explicit]
            report["pairing"] = {"rule": "pairing table", "pairs": len(chosen)}
        else:
            found, report["pairing"] = match_by_rule(list(placed.values()), results, cfg)
            chosen = [(a, b, None) for a, b in found]
        paired = {n.key for a, b, _ in chosen for n in (a, b)}
        report["positioned_nodules_not_paired"] = sum(1 for k in placed if k not in paired)
        return pair_entries(chosen, people, cfg.label_window_years)

    return Plan(requests, entries, report)
