import pytest

from gtok import GtokError
from gtok.weights import find_weights, require_weights


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GTOK_WEIGHTS", str(tmp_path / "gtok"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GTOK_INCEPTION_WEIGHTS", raising=False)


def test_missing_weights_message_names_file_and_places(tmp_path):
    assert find_weights("inception") is None
    with pytest.raises(GtokError) as err:
        require_weights("inception")
    message = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "GTOK_INCEPTION_WEIGHTS" in message


def test_found_in_torch_hub_cache_and_by_env(tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    assert find_weights("inception") == hub / "pt_inception-2015-12-05-6726825d.pth"
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(b"y")
    monkeypatch.setenv("GTOK_INCEPTION_WEIGHTS", str(other))
    assert find_weights("inception") == other


def test_explicit_path_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(GtokError, match="was not found"):
        find_weights("vgg16", tmp_path / "nope.pth")
