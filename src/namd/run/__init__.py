"""The run folder: its layout (`layout`), what each stage writes and reads and the readers that
turn damage into one line (`contract`), provenance and atomic writes (`provenance`), the lock of
a stage folder (`locking`), training checkpoints (`checkpoint`) and the machine's load and speed
beside a timing (`machine`). Below everything that reads or writes a run."""
