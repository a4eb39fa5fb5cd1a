"""IngestError messages, pickling (worker processes) and the --on-error policy."""

import pickle

import pytest

from namd.cohort.ehr import EHR
from namd.cohort.ingest.errors import ErrorLog, IngestError, as_ingest_error


def test_message_names_file_line_field():
    err = IngestError("unknown code '7'", "ctab.csv", 4, "sct_margins")
    assert str(err) == "ctab.csv line 4, field sct_margins: unknown code '7'"
    assert str(IngestError("bad", record="p1/n1")) == "record p1/n1: bad"
    assert str(err.within("other.csv", 9, "x")) == str(err)  # known parts are kept
    assert str(IngestError("bad").within("a.csv", 2)) == "a.csv line 2: bad"


def test_survives_pickling():
    err = IngestError("bad", "a.csv", 3, "x", "p1", "invalid")
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.line, back.field, back.record, back.category, str(back)) == \
        ("a.csv", 3, "x", "p1", "invalid", str(err))


def test_ehr_errors_keep_their_field():
    with pytest.raises(ValueError) as exc:
        EHR.from_mapping({"sct_margins": "5"}, record="r")
    err = as_ingest_error(exc.value, "t.csv", 2)
    assert err.field == "SCT_MARGINS" and str(err).startswith("t.csv line 2, field SCT_MARGINS: has code '5'")


def test_policies():
    with pytest.raises(IngestError):
        ErrorLog("stop").report(IngestError("bad", "a.csv", 2))
    log = ErrorLog("skip")
    log.report(IngestError("bad", "a.csv", 2, "x", "p1", "invalid"))
    log.note("p2", "partner skipped", "pair incomplete")
    assert log.counts() == {"invalid": 1, "pair incomplete": 1}
    text = log.to_csv()
    assert text.splitlines()[1] == "a.csv,2,x,p1,invalid,bad"
    assert log.to_csv(redact=True).splitlines()[1] == "a.csv,2,x,,invalid,"
    with pytest.raises(ValueError, match="--on-error"):
        ErrorLog("ignore")
