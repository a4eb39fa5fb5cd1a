"""The run folder's layout: its stage list comes from the table of methods, and a run made by an
older namd (other folder names) is refused in one line that says what to do."""

from __future__ import annotations

import pytest

from namd.cli.main import main
from namd.config import load_config, save_config
from namd.run.contract import RunFileError
from namd.run.layout import RunDir, stages


def test_the_stage_list_follows_the_table_in_the_order_stages_are_made():
    assert stages() == ("cohort", "vae", "prior", "cond", "vae_no_align", "prior_no_align",
                        "cond_no_align", "cond_null_context", "cond_sd15", "cond_flux",
                        "vae_ddlcxr", "cond_ddlcxr", "classifier_mcwgan", "cond_mcwgan",
                        "autoencoder_corrflownet", "cond_corrflownet", "autoencoder_imageflownet",
                        "cond_imageflownet", "evaluator", "samples", "samples_no_align",
                        "samples_null_context", "samples_sd15", "samples_flux", "samples_ddlcxr",
                        "samples_mcwgan", "samples_corrflownet_ode", "samples_corrflownet_sde",
                        "samples_imageflownet", "eval", "report")


@pytest.mark.parametrize("old", ["cond_null", "samples_null"])
def test_a_run_with_old_folder_names_is_refused_in_one_line(tmp_path, old, capsys):
    run = RunDir(tmp_path / "run")
    save_config(load_config("tiny"), run.path / "config.yaml")
    run.stage(old).mkdir()
    with pytest.raises(RunFileError, match=rf"older namd.*rename RUN/{old} -> RUN/{old}_context.*"
                                           r"namd evaluate --run"):
        run.saved_config()
    assert main(["sample", "--run", str(run.path), "--method", "null_context"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"rename RUN/{old} -> RUN/{old}_context" in err
