from __future__ import annotations

import http.server
import io
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.recsys import (
    NON_PRODUCT_CODES,
    ONLINE_RETAIL_COLUMNS,
    DataFormatError,
    DataUnavailableError,
    SyntheticConfig,
    clean_transactions,
    download_online_retail,
    find_data_file,
    load_transactions,
    normalize_online_retail,
    read_online_retail,
    resolve_data_source,
)
from tests.recsys.conftest import require_real_data

UNREACHABLE = "http://127.0.0.1:9/online+retail.zip"  # port 9 (discard): refused at once


def test_real_file_has_the_published_shape(real_raw: pd.DataFrame) -> None:
    # SOURCE.md integrity checks.
    assert len(real_raw) == 541_909
    assert list(real_raw.columns) == list(ONLINE_RETAIL_COLUMNS)
    assert real_raw["CustomerID"].isna().sum() == 135_080
    assert int(real_raw["Quantity"].sum()) == 5_176_450


def test_cleaning_follows_or_t1_on_the_real_file(
    real_raw: pd.DataFrame, real_lines: pd.DataFrame
) -> None:
    assert real_lines["CustomerID"].notna().all()
    assert not real_lines["InvoiceNo"].str.startswith("C").any()
    assert (real_lines["Quantity"] > 0).all() and (real_lines["UnitPrice"] > 0).all()
    assert not real_lines["StockCode"].isin(NON_PRODUCT_CODES).any()
    assert not real_lines["StockCode"].str.startswith("gift_").any()
    # SOURCE.md: 397,884 lines before the non-product codes are dropped.
    base = real_raw[
        real_raw.CustomerID.notna()
        & ~real_raw.InvoiceNo.str.startswith("C")
        & (real_raw.Quantity > 0)
        & (real_raw.UnitPrice > 0)
    ]
    assert len(base) == 397_884
    assert len(real_lines) < len(base)


def test_cleaning_rules_one_by_one() -> None:
    raw = pd.DataFrame(
        {
            "InvoiceNo": ["1", "C2", "3", "4", "5", "6", "7", "8"],
            "StockCode": ["A", "A", "A", "A", "POST", "gift_0001_10", "BANK CHARGES", "B"],
            "Description": ["a"] * 8,
            "Quantity": [1, -1, 0, 2, 1, 1, 1, 3],
            "InvoiceDate": pd.to_datetime(["2011-01-01"] * 8),
            "UnitPrice": [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 2.0],
            "CustomerID": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, np.nan],
            "Country": ["UK"] * 8,
        }
    )
    out = clean_transactions(raw)
    assert out["InvoiceNo"].tolist() == ["1"]
    assert out["CustomerID"].dtype == np.int64


def test_every_format_reads_the_same(real_raw: pd.DataFrame, tmp_path: Path) -> None:
    part = real_raw.iloc[:2_000]
    part.to_csv(tmp_path / "x.csv", index=False)
    part.to_csv(tmp_path / "x.csv.gz", index=False)
    part.to_parquet(tmp_path / "x.parquet")
    for name in ("x.csv", "x.csv.gz", "x.parquet"):
        got = read_online_retail(tmp_path / name)
        pd.testing.assert_frame_equal(
            got.reset_index(drop=True),
            normalize_online_retail(part).reset_index(drop=True),
            check_dtype=False,
        )


def test_xlsx_without_openpyxl_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # openpyxl is a core dependency: hide it (an import of a None module raises ImportError).
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    (tmp_path / "Online Retail.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataFormatError, match="openpyxl"):
        read_online_retail(tmp_path)


def test_missing_real_data_fails_when_services_are_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="FLYWHEEL_REQUIRE_SERVICES=1"):
        require_real_data(tmp_path / "absent")
    monkeypatch.delenv("FLYWHEEL_REQUIRE_SERVICES")
    with pytest.raises(pytest.skip.Exception, match="see its SOURCE"):
        require_real_data(tmp_path / "absent")


def test_wrong_schema_and_suffix_are_refused(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataFormatError, match="missing column"):
        read_online_retail(tmp_path / "other.csv")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataFormatError, match="unsupported file type"):
        find_data_file(tmp_path / "notes.txt")
    with pytest.raises(DataUnavailableError, match="no such file"):
        find_data_file(tmp_path / "missing.parquet")


def test_source_order_explicit_then_env_then_shared(tmp_path: Path, real_data_file: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # Explicit path wins; a missing explicit path is an error, never a silent fallback.
    src = resolve_data_source(real_data_file, env={}, default_dir=empty, allow_download=False)
    assert src.kind == "file" and src.path == real_data_file and "--data" in src.description
    with pytest.raises(DataUnavailableError, match="--data"):
        resolve_data_source(tmp_path / "nope", env={}, allow_download=False)
    env = {"FLYWHEEL_DATA": str(real_data_file.parent)}
    src = resolve_data_source(None, env=env, default_dir=empty, allow_download=False)
    assert src.path == real_data_file and "$FLYWHEEL_DATA" in src.description
    with pytest.raises(DataUnavailableError, match="FLYWHEEL_DATA"):
        resolve_data_source(None, env={"FLYWHEEL_DATA": str(empty)}, allow_download=False)
    # The shared folder next to the repository is the default.
    src = resolve_data_source(None, env={}, allow_download=False)
    assert src.path == real_data_file and "shared" in src.description


def test_no_data_and_no_network_falls_back_to_synthetic(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    loaded = load_transactions(
        None,
        env={},
        default_dir=empty,
        cache_dir=tmp_path / "cache",
        url=UNREACHABLE,
        connect_timeout=1.0,
        synthetic=SyntheticConfig(n_users=200, n_items=50, n_categories=5),
    )
    assert loaded.source.kind == "synthetic" and not loaded.source.is_real
    text = loaded.source.description
    assert text.startswith("SYNTHETIC data")
    assert "cannot download http://127.0.0.1:9/" in text and "200 users" in text
    assert list(loaded.frame.columns) == list(ONLINE_RETAIL_COLUMNS)
    assert not (tmp_path / "cache" / "Online Retail.xlsx").exists()


@pytest.fixture
def zip_server() -> Iterator[tuple[str, bytes, list[str]]]:
    """A local HTTP server that serves one zip holding 'Online Retail.xlsx'."""
    content = b"not really an xlsx, but the download path does not parse it"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Online Retail.xlsx", content)
    payload = buf.getvalue()
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/352.zip", content, hits
    server.shutdown()
    server.server_close()


def test_download_unpacks_into_the_cache_once(
    tmp_path: Path, zip_server: tuple[str, bytes, list[str]]
) -> None:
    url, content, hits = zip_server
    path = download_online_retail(tmp_path / "cache", url=url)
    assert path.name == "Online Retail.xlsx" and path.read_bytes() == content
    assert not list((tmp_path / "cache").glob("*.part"))
    again = download_online_retail(tmp_path / "cache", url=url)
    assert again == path and len(hits) == 1  # served from the cache the second time
    with pytest.raises(DataUnavailableError, match="cannot download"):
        download_online_retail(tmp_path / "other", url=UNREACHABLE)


def test_xlsx_reads_like_the_other_formats(real_raw: pd.DataFrame, tmp_path: Path) -> None:
    part = real_raw.iloc[:300]
    part.to_excel(tmp_path / "Online Retail.xlsx", index=False)
    got = read_online_retail(tmp_path)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True),
        normalize_online_retail(part).reset_index(drop=True),
        check_dtype=False,
    )
