from vlx.data import sources


def test_identity_names_what_is_read_whatever_the_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pets").mkdir()
    same = sources.identity("arrayrecord:pets", "test")
    assert same == sources.identity(f"arrayrecord:{tmp_path}/pets", "train")  # one directory
    assert same == sources.identity("pets", "validation")  # a bare path is an ArrayRecord one
    assert same != sources.identity("arrayrecord:pets-test", "test")
    assert sources.identity("demo", "test") != sources.identity("demo", "train")
    assert sources.identity("tfds:pets", "test") != sources.identity("tfds:pets", "train")
    assert sources.identity("tfds:pets:train", "test") == sources.identity("tfds:pets", "train")
