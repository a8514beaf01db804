"""CSV files as spreadsheets and locales write them (issue 20, F10-F14, at the reader): the
table is read as the trace it holds, or refused with what to change. The command-line fits of
the same files are in test_faults_fit.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbi_twins.recording import load_recording

SIGNAL = [-0.25, 1.5, 3.0, -12.75]
TIMES = [0.0, 0.1, 0.2, 0.3]


def _write(tmp_path, text: str):
    path = tmp_path / "cell.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text",
    [
        "time_ms,current_pA_pF\n0,-0.25\n0.1,1.5\n0.2,3\n0.3,-12.75\n",
        "time_ms;current_pA_pF\n0;-0.25\n0.1;1.5\n0.2;3\n0.3;-12.75\n",  # F11
        "time_ms\tcurrent_pA_pF\n0\t-0.25\n0.1\t1.5\n0.2\t3\n0.3\t-12.75\n",  # F12
        "time_ms,current_pA_pF,\n0,-0.25,\n0.1,1.5,\n0.2,3,\n0.3,-12.75,\n",  # F13
        "time_ms,current_pA_pF\n0,-0.25,\n0.1,1.5,\n0.2,3,\n0.3,-12.75,\n",  # data lines only
        "time_ms,current_pA_pF,\n0,-0.25\n0.1,1.5\n0.2,3\n0.3,-12.75\n",  # header line only
        "time_ms;current_pA_pF;;\n0;-0,25;;\n0,1;1,5;;\n0,2;3;;\n0,3;-12,75;;\n",  # F14, two
    ],
    ids=[
        "demo's columns",
        "F11 semicolons",
        "F12 tabs",
        "F13 trailing separator",
        "trailing separator on data lines",
        "trailing separator in the header",
        "F14 decimal commas, two empty columns",
    ],
)
def test_separators_decimal_marks_and_empty_trailing_columns_are_read(tmp_path, text):
    rec = load_recording(_write(tmp_path, text))
    np.testing.assert_array_equal(rec.signal, SIGNAL)
    np.testing.assert_allclose(rec.time_ms, TIMES, atol=1e-12)
    assert rec.signal_unit == "pA/pF" and rec.metadata["columns"] == ["time_ms", "current_pA_pF"]


def test_an_empty_column_with_a_name_is_still_an_empty_column(tmp_path):
    """Only a column empty everywhere, its header too, is a stray separator."""
    path = _write(tmp_path, "time_ms,I (pA),note\n0,1,\n0.1,2,\n")
    with pytest.raises(ValueError, match="ambiguous columns: 'I \\(pA\\)', 'note'"):
        load_recording(path)
    path = _write(tmp_path, "time_ms,I (pA),\n0,1,\n0.1,,\n0.2,3,x\n")
    with pytest.raises(ValueError, match="ambiguous columns"):
        load_recording(path)


def test_a_headerless_column_is_read_when_its_unit_and_interval_are_given(tmp_path):
    """F10: without a header nothing says the unit or the sampling, so both must be given."""
    path = _write(tmp_path, "-0.25\n1.5\n3\n-12.75\n")
    for kwargs in ({}, {"signal_unit": "pA/pF"}, {"sample_interval_ms": 0.1}):
        with pytest.raises(ValueError) as info:
            load_recording(path, **kwargs)
        message = str(info.value)
        assert message.startswith(f"{path}: line 1 is data, not a header")
        assert "signal_unit= and sample_interval_ms= (sbi-twins fit: --unit and" in message
    rec = load_recording(path, signal_unit="pA/pF", sample_interval_ms=0.1)
    np.testing.assert_array_equal(rec.signal, SIGNAL)
    np.testing.assert_allclose(rec.time_ms, TIMES)
    assert rec.command is None and rec.metadata["signal_column"] == "signal"


def test_headerless_columns_need_a_header(tmp_path):
    path = _write(tmp_path, "0,-0.25\n0.1,1.5\n0.2,3\n")
    with pytest.raises(ValueError, match="line 1 is data, not a header") as info:
        load_recording(path, signal_unit="pA/pF", sample_interval_ms=0.1)
    assert "single column" not in str(info.value)  # the remedy of one column only
