"""Safe files for importance models: skops only, and only types we trust.

A pickle (or joblib) file runs arbitrary code when it is loaded, so an importance model shared as
one could do anything to the machine that loads it. Models are therefore saved and loaded with
`skops <https://skops.readthedocs.io>`_, whose loader reconstructs objects from a description and
refuses every type that it is not told to trust. We trust scikit-learn, NumPy and SciPy types and
the builtins skops needs; a file that names anything else is refused before anything is built,
with the list of offending types.

Example:
    >>> import tempfile, pathlib
    >>> from sklearn.linear_model import Ridge
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.skops"
    >>> save_importance_model(Ridge().fit([[0.0], [1.0]], [0.0, 1.0]), path)
    >>> type(load_importance_model(path)).__name__
    'Ridge'
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import skops.io as sio

from lightning_autoprune.core.files import atomic_write_bytes

#: Module prefixes whose types a loaded file may contain.
TRUSTED_PREFIXES: tuple[str, ...] = ("sklearn.", "numpy.", "scipy.")
#: Builtin and standard types skops reports for ordinary estimators.
TRUSTED_NAMES: frozenset[str] = frozenset(
    {"builtins.dict", "builtins.list", "builtins.tuple", "builtins.slice", "builtins.frozenset", "builtins.set"}
)
_REFUSED_SUFFIXES = {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt"}


def save_importance_model(estimator: Any, path: str | Path) -> None:
    """Write ``estimator`` to ``path`` with skops, atomically (:func:`~lightning_autoprune.core.files.atomic_write`).

    Args:
        estimator: a (fitted) scikit-learn estimator.
        path: destination; must end in ``.skops``. Missing folders are created.

    Raises:
        ValueError: ``path`` does not end in ``.skops``.
    """
    path = Path(path)
    if path.suffix != ".skops":
        raise ValueError(f"Importance models are saved as skops files: `path` must end in '.skops', got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sio.dumps(estimator))


def untrusted_types(path: str | Path) -> list[str]:
    """Types named in the skops file at ``path`` that :func:`load_importance_model` would refuse.

    Example:
        >>> import tempfile, pathlib
        >>> from sklearn.linear_model import Ridge
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.skops"
        >>> save_importance_model(Ridge().fit([[0.0], [1.0]], [0.0, 1.0]), path)
        >>> untrusted_types(path)
        []
    """
    return [
        t
        for t in sio.get_untrusted_types(file=str(path))
        if t not in TRUSTED_NAMES and not t.startswith(TRUSTED_PREFIXES)
    ]


def load_importance_model(path: str | Path) -> Any:
    """Load an importance model saved by :func:`save_importance_model` (or any skops file of trusted types).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a pickle/joblib/torch file, is not a valid skops file, or names
            types outside scikit-learn, NumPy and SciPy. Nothing from the file is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Importance model file {str(path)!r} does not exist.")
    if path.suffix.lower() in _REFUSED_SUFFIXES:
        raise ValueError(
            f"Refusing to load importance model {str(path)!r}: {path.suffix} files are pickles, and loading a pickle "
            "runs whatever code it contains. Save the estimator with "
            "`lightning_autoprune.save_importance_model(estimator, 'model.skops')` and pass the .skops file."
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"Importance model {str(path)!r} is not a valid skops file (a skops file is a zip archive with a "
            "schema); it may be corrupt or of another format."
        )
    try:
        refused = untrusted_types(path)
    except Exception as err:  # a zip that is not a skops file, or a damaged schema
        raise ValueError(f"Importance model {str(path)!r} is not a valid skops file: {err}") from err
    if refused:
        raise ValueError(
            f"Refusing to load importance model {str(path)!r}: it contains types outside scikit-learn, NumPy and "
            f"SciPy, which are not trusted: {', '.join(sorted(refused))}."
        )
    trusted = sio.get_untrusted_types(file=str(path))
    try:
        return sio.load(str(path), trusted=trusted)
    except Exception as err:
        raise ValueError(f"Importance model {str(path)!r} could not be loaded: {type(err).__name__}: {err}") from err
