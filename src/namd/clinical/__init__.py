"""What a screening radiologist reads from the K virtual follow-ups (issue 31).

    lungrads.py    every Lung-RADS v2022 rule namd applies (v1.1 where they differ), cited
    readout.py     one patient's readout over K: categories, growth, doubling time, management
    agreement.py   the readout against what happened (weighted kappa, AUROC, Brier)
    calibrate.py   the measurer's own error against the synthetic generator's true diameters

Research use only, not a medical device: `READOUT_NOTICE` says so with the caveat of a 2D crop.
"""

from __future__ import annotations

NOTICE = "Research use only, not a medical device."
CROP_CAVEAT = ("Sizes are read from one 2D crop through the nodule's centre (no volume, no "
               "other slices), by an automatic measurer whose error was measured only on "
               "synthetic nodules.")
READOUT_NOTICE = f"{NOTICE} {CROP_CAVEAT}"
