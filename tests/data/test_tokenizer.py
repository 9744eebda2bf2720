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


def test_own_tokenizers_load_without_pytorch(tmp_path):
    """A saved plain `tokenizers` tokenizer (the demo's, or one `vlx data build` trained) skips
    AutoTokenizer, whose config machinery imports PyTorch when installed; others still go
    through it."""
    import json
    import subprocess
    import sys

    tokenizer.load("demo", context_length=8).save(tmp_path / "tok")
    code = (
        "import sys\n"
        "from vlx.data import tokenizer\n"
        f"tok = tokenizer.load({str(tmp_path / 'tok')!r}, context_length=8)\n"
        "print(type(tok.hf).__name__, tok(['a red circle'])[0].tolist(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    demo_ids = tokenizer.load("demo", context_length=8)(["a red circle"])[0].tolist()
    assert out.stdout.split(" ", 1)[1].strip() == f"{demo_ids} False"

    config = tmp_path / "tok" / "tokenizer_config.json"
    assert tokenizer._plain(str(tmp_path / "tok"))
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "tokenizer_class": "CLIPTokenizer"})
    )
    assert not tokenizer._plain(str(tmp_path / "tok"))
    assert not tokenizer._plain(str(tmp_path / "missing"))
