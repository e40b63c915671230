import numpy as np
import pytest

from helix.errors import HelixInputError
from helix.sim.workload import bucket_arrivals, gamma_arrivals, load_lengths, poisson_arrivals


def test_azure_trace_csv(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.1805900,396,109\n"
    )
    lengths = load_lengths(path)
    assert list(lengths.prompt_tokens) == [374, 396] and list(lengths.output_tokens) == [44, 109]
    assert lengths.times_s == pytest.approx([0.0, 3.5])


@pytest.mark.parametrize("row", ["0,-5,10", "0,100,-1", "0,,10", "0,abc,3"])
def test_bad_trace_rows(tmp_path, row):
    path = tmp_path / "bad.csv"
    path.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,10\n{row}\n")
    with pytest.raises(HelixInputError, match="bad.csv:3"):
        load_lengths(path)


def test_unknown_columns_and_missing_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(HelixInputError, match="columns"):
        load_lengths(path)
    with pytest.raises(HelixInputError):
        load_lengths(tmp_path / "missing.csv")


def test_arrival_processes():
    rng = np.random.default_rng(0)
    times = poisson_arrivals(5.0, 2000.0, rng)
    assert len(times) / 2000.0 == pytest.approx(5.0, rel=0.05) and np.all(np.diff(times) >= 0)
    bursty = gamma_arrivals(5.0, 3.0, 2000.0, rng)
    gaps = np.diff(bursty)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.15)
    buckets = bucket_arrivals(np.array([10.0, 20.0, 30.0]), 2.0, 3000.0, rng)
    assert len(buckets) / 3000.0 == pytest.approx(2.0, rel=0.05)
    for bad in (0.0, -1.0):
        with pytest.raises(HelixInputError, match="rate"):
            poisson_arrivals(bad, 10.0, rng)
