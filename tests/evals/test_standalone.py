"""`vlx eval` checks its evaluators' data before it restores the model."""

import logging

from tests.export.helpers import trained
from tests.helpers import never
from vlx import cli, train


def test_a_wrong_eval_dataset_fails_before_the_model_is_restored(
    tmp_path, capsys, caplog, monkeypatch
):
    workdir = trained(tmp_path, "clip_gelu")
    monkeypatch.setattr(train, "load_trained", never("restored before the data was checked"))
    caplog.set_level(logging.WARNING)
    nope = tmp_path / "nope"
    spec = f"{{'zs': {{'type': 'zeroshot', 'dataset': 'arrayrecord:{nope}'}}}}"
    assert cli.main(["eval", "--workdir", workdir, f"--config.evals={spec}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"vlx: error: evals.zs.dataset: dataset {nope} does not exist; "
        "build one with `vlx data build`"
    )
    # Orbax's notices that the checkpoints were opened read-only (on purpose) are not shown.
    assert "read only" not in caplog.text and "read_only" not in caplog.text
