"""Virtual follow-ups for the example patient: python examples/predict.py RUN (a trained run)."""

import json
import sys
from pathlib import Path

import numpy as np

from namd.cohort.ehr import EHR
from namd.inference.patient import predict_patient

if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} RUN  (a run folder with trained cond, vae, evaluator)")
here = Path(__file__).resolve().parent
record = json.loads((here / "patient.json").read_text())
crop = np.load(here / "crop.npy")  # 64 x 64 float32 HU at 0.7 mm, see README.md
result = predict_patient(sys.argv[1], crop, EHR.from_mapping(record), key=record["patient_id"])
print(f"p_followup_mean = {result.p_followup_mean:.3f}")
