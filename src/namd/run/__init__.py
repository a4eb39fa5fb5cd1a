"""The run folder: its layout (`layout`), what each stage writes and reads (`contract`), the
readers that turn damage into one line (`readers`), provenance and atomic writes (`provenance`),
the lock of a stage folder (`locking`), training checkpoints (`checkpoint`), the machine's load
and speed beside a timing (`machine`) and the errors a command ends with (`errors`). Below
everything that reads or writes a run."""
