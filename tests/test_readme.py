"""The README's Python examples run as they are written (sections "Your own model and data", "Extending
lljax", "The Python API"), each in a fresh namespace inside a temporary folder."""
import re
from pathlib import Path

import pytest

from lljax import metrics

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_blocks(section: str) -> list[str]:
    start = README.index(f"## {section}")
    end = README.find("\n## ", start + 3)
    return re.findall(r"```python\n(.*?)```", README[start:end if end != -1 else None], re.S)


def run_blocks(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(section)
    assert blocks, section
    namespaces = []
    for block in blocks:
        namespace = {"__name__": "readme_example"}
        exec(compile(block, f"README: {section}", "exec"), namespace)
        namespaces.append(namespace)
    return namespaces


@pytest.mark.slow
def test_your_own_model_and_data(tmp_path, monkeypatch):
    own, own_nnx, own_eqx, primitives = run_blocks("Your own model and data", tmp_path, monkeypatch)
    assert own["results"].dataset == "signals" and (tmp_path / "runs" / "signals" / "report.md").exists()
    report = (tmp_path / "runs" / "signals" / "report.md").read_text()
    assert report.startswith("# lljax report: readme_example:conv_net on signals")
    for run, out in ((own_nnx, "signals-nnx"), (own_eqx, "signals-eqx")):  # the same signals: NNX, Equinox
        members = (tmp_path / "runs" / out / "members.csv").read_text()
        assert run["results"].model == "readme_example:mlp" and "nc1" in members.splitlines()[0]
        assert (tmp_path / "runs" / out / "report.md").read_text().startswith("# lljax report: readme_example:mlp")
    assert primitives["params"] is not None


@pytest.mark.slow
def test_extending_lljax(tmp_path, monkeypatch):
    try:
        run_blocks("Extending lljax", tmp_path, monkeypatch)
    finally:
        metrics.FAMILIES.pop("param_norm", None)
    out = tmp_path / "runs" / "param_norm"
    assert "param_norm" in (out / "members.csv").read_text().splitlines()[0]
    assert (out / "figures" / "param_norm.png").exists() and "| param_norm | all |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_the_python_api(tmp_path, monkeypatch):
    (api,) = run_blocks("The Python API", tmp_path, monkeypatch)
    assert api["metrics"].trace.shape == (8,) and (tmp_path / "runs" / "api" / "grid.csv").exists()


@pytest.mark.slow
def test_sequences_and_transformers(tmp_path, monkeypatch):
    (tokens,) = run_blocks("Sequences and Transformers", tmp_path, monkeypatch)
    out = tmp_path / "runs" / "pairsum"
    assert tokens["results"].dataset == "pairsum" and (out / "report.md").exists()
    assert "per-token labels (every mean over the labelled positions); CKA probe: training inputs unmixed" in \
        (out / "report.md").read_text()
    from lljax import tables

    best = max(row["test_acc_mean"] for row in tables.make_tables(tokens["results"]).grid)
    assert best > 0.5  # width 32 learns the pair sums (0.98 when this was written)
