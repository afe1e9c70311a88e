"""Partition summaries: counts and histograms, the rich table, the PNG plot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedge.data.describe import PartitionStats, describe_partition, plot_partition, stats_table
from fedge.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_case() -> PartitionStats:
    labels = np.array([0, 1, 1, 2, 0, 2])
    partition = [np.array([0, 1]), np.array([2, 3, 4]), np.array([], dtype=np.int64)]
    return describe_partition(partition, labels, num_classes=3)


def render(table: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_counts_and_histogram_match_hand_computation() -> None:
    stats = small_case()
    np.testing.assert_array_equal(stats.counts, [2, 3, 0])
    np.testing.assert_array_equal(stats.label_hist, [[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert (stats.num_clients, stats.num_classes, stats.total) == (3, 3, 5)
    assert (stats.min_count, stats.median_count, stats.max_count) == (0, 2.0, 3)
    assert stats.mean_labels_per_client == pytest.approx(5 / 3)


def test_to_dict_is_json_ready() -> None:
    data = json.loads(json.dumps(small_case().to_dict()))
    assert data["counts"] == [2, 3, 0]
    assert data["label_hist"][1] == [1, 1, 1]
    assert data["median_count"] == 2.0


def test_stats_arrays_are_read_only() -> None:
    stats = small_case()
    with pytest.raises(ValueError, match="read-only"):
        stats.counts[0] = 5


def test_stats_reject_histogram_that_disagrees_with_counts() -> None:
    with pytest.raises(DataError, match="sum to counts"):
        PartitionStats(counts=np.array([2, 1]), label_hist=np.array([[1, 0], [1, 1]]))


def test_describe_rejects_rows_out_of_range() -> None:
    with pytest.raises(DataError, match="outside"):
        describe_partition([np.array([0, 6])], np.zeros(6, dtype=np.int64), num_classes=1)


def test_describe_rejects_labels_beyond_num_classes() -> None:
    with pytest.raises(DataError, match=r"0\.\.1"):
        describe_partition([np.array([0])], np.array([2]), num_classes=2)


def test_table_truncates_beyond_max_rows() -> None:
    labels = np.arange(25) % 3
    stats = describe_partition([np.array([i]) for i in range(25)], labels, num_classes=3)
    table = stats_table(stats, max_rows=20)
    assert table.row_count == 21
    text = render(table)
    assert "… 5 more clients" in text
    assert "25 clients, 25 rows" in text


def test_table_shows_client_ids_and_per_label_columns() -> None:
    table = stats_table(small_case(), client_ids=["alice", "bob", "carol"])
    assert table.row_count == 3
    assert [c.header for c in table.columns] == ["client", "rows", "labels", "0", "1", "2"]
    assert "carol" in render(table)


def test_table_uses_sparkline_for_many_classes() -> None:
    labels = np.arange(62)
    stats = describe_partition([labels[:31], labels[31:]], labels, num_classes=62)
    table = stats_table(stats)
    assert len(table.columns) == 4
    assert "█" in render(table)


def test_table_rejects_wrong_number_of_client_ids() -> None:
    with pytest.raises(DataError, match="2 client ids for 3 clients"):
        stats_table(small_case(), client_ids=["a", "b"])


def test_plot_writes_png_atomically(tmp_path: Path) -> None:
    out = plot_partition(small_case(), tmp_path / "sub" / "split.png", title="small")
    assert out == tmp_path / "sub" / "split.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert b"small" in data and b"first 100" not in data
    assert [p.name for p in out.parent.iterdir()] == ["split.png"]


def test_plot_handles_many_clients(tmp_path: Path) -> None:
    labels = np.arange(300) % 10
    stats = describe_partition([np.array([i, i + 150]) for i in range(150)], labels, 10)
    data = plot_partition(stats, tmp_path / "many.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert b"(first 100 of 150 clients)" in data
