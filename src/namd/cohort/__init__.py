"""The data model every stage reads: EHR records, the on-disk cohort, and its sources."""
