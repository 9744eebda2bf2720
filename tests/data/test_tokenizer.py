from vlx.data import tokenizer


def test_demo_tokenizer_pads_ends_with_eos_and_counts_truncation(tmp_path):
    tok = tokenizer.load("demo", context_length=6)
    ids, truncated = tok(["a red circle", "a photo of a small red circle on the left"])
    assert ids.shape == (2, 6) and truncated == 1
    assert list(ids[0, 3:]) == [tok.eos_id, tok.pad_id, tok.pad_id]
    assert ids[1, -1] == tok.eos_id
    assert tok.hf.unk_token_id not in ids
    tok.save(tmp_path / "tok")
    again = tokenizer.load(str(tmp_path / "tok"), context_length=6)
    assert (again(["a red circle"])[0] == ids[:1]).all()


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    import pytest

    from vlx.errors import ConfigError

    with pytest.raises(ConfigError, match="data.tokenizer=.*cannot load a tokenizer"):
        tokenizer.load(str(tmp_path / "missing"), context_length=8)
