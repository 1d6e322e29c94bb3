"""The notebooks run top to bottom on small generated data against the test Redis, and are
committed without outputs.

Each notebook is executed by nbclient in a ``python3`` kernel (ipykernel, this interpreter),
with ``FEED_REDIS_URL`` pointing at the test Redis (flushed first by the ``r`` fixture) and its
``parameters`` cell overridden by an injected cell, as papermill does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from feed import contract as c
from feed import experiments as ex
from feed import versions as reg

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = ("01_retrain.ipynb", "02_ab_test.ipynb")
CELL_TIMEOUT_S = 180


def _inject(nb: Any, params: dict[str, Any]) -> None:
    """Insert a cell setting ``params`` right after the cell tagged ``parameters``."""
    at = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    lines = ["from pathlib import Path"] + [f"{k} = {v!r}" for k, v in params.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines).replace("PosixPath(", "Path("))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)


def _execute(
    name: str,
    params: dict[str, Any],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _inject(nb, params)
    monkeypatch.setenv("FEED_REDIS_URL", redis_url)  # the kernel inherits this environment
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("MPLBACKEND", "agg")
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return nb


def _text(nb: Any) -> str:
    """Every stream and plain-text output of the executed notebook."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(nb: Any) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def _one(pattern: str, text: str) -> str:
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, found, text[-3000:])
    return str(found[0])


@pytest.mark.slow
def test_retrain_notebook_publishes_the_new_version(
    r: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {
        "N_USERS": 300,
        "N_POSTS": 400,
        "WORK_DIR": tmp_path / "work",
        "N_COMPARE": 40,
        "TRAIN": {"factors": 16, "iterations": 8, "n_candidates": 100},
    }
    nb = _execute("01_retrain.ipynb", params, redis_url, tmp_path, monkeypatch)
    text = _text(nb)
    live = _one(r"live version: (\S+)", text)
    new = _one(r"new version: (\S+)", text)
    assert new != live
    assert reg.live_version(r) == new, "the new version was not made live"
    states = {m["version"]: m["state"] for m in reg.list_versions(r)}
    assert states == {live: c.STATE_READY, new: c.STATE_READY}
    assert f"live: {new} (was {live})" in text
    assert _images(nb) >= 3  # metrics per model, recall/NDCG at k, live vs new pages
    assert "like_ndcg" in text and "default" in text  # the evaluation table
    reasons = set(
        re.findall(
            r"\b(collaborative|content|co_engagement|followed_author|"
            r"similar_to|trending)\b",
            text,
        )
    )
    assert reasons, "the pages show no reasons"


@pytest.mark.slow
def test_ab_notebook_promotes_the_winner(
    r: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {"N_USERS": 300, "N_POSTS": 400, "WORK_DIR": tmp_path / "work"}
    nb = _execute("02_ab_test.ipynb", params, redis_url, tmp_path, monkeypatch)
    text = _text(nb)
    treatment = _one(r"treatment: (\S+)", text)
    control = _one(r"control: (\S+)", text)
    (cfg,) = ex.list_experiments(r)
    assert cfg["status"] == ex.STATUS_STOPPED
    assert {a["name"]: a["version"] for a in cfg["arms"]} == {
        "control": control,
        "treatment": treatment,
    }
    rep = ex.report(r, cfg["name"])
    treat = next(a for a in rep["arms"] if a["arm"] == "treatment")
    assert treat["users"] > 50 and treat["vs_control"]["clicks_per_user"]["lift"] > 0
    assert f"winner: treatment ({treatment})" in text
    assert reg.live_version(r) == treatment, "the winner was not made live"
    assert _images(nb) >= 2  # per-arm rates with CIs, lifts


@pytest.mark.parametrize("name", ALL)
def test_notebooks_are_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.get("outputs") for cell in code] == [[]] * len(code)
    assert [cell.get("execution_count") for cell in code] == [None] * len(code)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell is the parameters"
    assert all("import feed" not in cell.source or cell.id == "imports" for cell in code)
