"""`homeward bench e2e --plot`: the run second by second, drawn; a missing extra is named before the run."""

import sys
from pathlib import Path

import pytest

from services.ops import e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_timeline_is_drawn_to_a_png(tmp_path: Path) -> None:
    result = {
        "participants": 3, "cases_per_second": 1.5, "replicas": 1, "rate_requested": None,
        "timeline": [
            {"second": 0, "submitted": 3, "paid": 0, "p50_seconds": None, "p99_seconds": None},
            {"second": 1, "submitted": 0, "paid": 3, "p50_seconds": 1.2, "p99_seconds": 1.9},
        ],
    }  # fmt: skip
    e2e.plot(result, tmp_path / "run.png")
    assert (tmp_path / "run.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plotting_without_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[charts\]'"):
        e2e.plotting_available()
