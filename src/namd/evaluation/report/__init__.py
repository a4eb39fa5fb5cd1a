"""`namd report`: the run's figures and one-file HTML report, built from what the other stages
wrote (`inputs`), section by section."""
