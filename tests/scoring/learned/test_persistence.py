from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge

from lightning_autoprune.scoring.learned.persistence import load_importance_model, save_importance_model

SIDE_EFFECT = Path(__file__).parent / "_side_effect_marker"


class Payload:
    """An object that would write a file if it were ever rebuilt from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("code ran")
        self.__dict__.update(state)

    def __reduce__(self) -> tuple:
        return (Path(self.marker).write_text, ("code ran",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker.txt"


def test_round_trip_predicts_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), rng.normal(size=200)
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(x, y)
    path = tmp_path / "model.skops"
    save_importance_model(model, path)
    loaded = load_importance_model(path)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.skops"]  # no temporary file left behind


def test_save_refuses_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in '\.skops', got '.*model\.pkl'"):
        save_importance_model(Ridge(), tmp_path / "model.pkl")


def test_pickle_files_are_refused_without_running_them(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(ValueError, match=r"\.pkl files are pickles, and loading a pickle runs whatever code"):
        load_importance_model(path)
    disguised = tmp_path / "model.skops"  # a pickle renamed to .skops is not a skops archive
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="is not a valid skops file"):
        load_importance_model(disguised)
    assert not marker.exists()


def test_untrusted_types_are_refused_without_side_effects(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "evil.skops"
    sio.dump({"model": Ridge(), "payload": Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"not trusted: .*Payload"):
        load_importance_model(path)
    assert not marker.exists()


def test_corrupt_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.skops"
    save_importance_model(Ridge().fit([[0.0], [1.0]], [0.0, 1.0]), good)
    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.skops"):
        load_importance_model(truncated)
    schema_less = tmp_path / "schema_less.skops"
    with zipfile.ZipFile(schema_less, "w") as archive:
        archive.writestr("something.txt", "not a schema")
    with pytest.raises(ValueError, match="is not a valid skops file"):
        load_importance_model(schema_less)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_importance_model(tmp_path / "absent.skops")
