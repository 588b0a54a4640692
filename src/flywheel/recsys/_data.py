"""The UCI Online Retail data: find it, read any of its formats, clean it as protocol OR-T1 says.

Where the data comes from, in order (``resolve_data_source``):

1. an explicit path (``--data PATH``), else ``$FLYWHEEL_DATA`` — a file, or a folder holding one;
   a missing explicit path is an error, never a silent fallback;
2. ``../shared/datasets/uci-online-retail/`` next to the repository, when it exists;
3. the official file of the UCI repository (data set 352), downloaded once into a cache —
   only with network access; the attempt fails fast (short connect timeout);
4. otherwise the seeded synthetic generator (``flywheel.recsys.generate_transactions``), and the
   source says so plainly.

The data is never committed. Attribution (CC BY 4.0): Chen, D. (2015). *Online Retail* [Dataset].
UCI Machine Learning Repository. https://doi.org/10.24432/C5BW33
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from flywheel.recsys._errors import DataFormatError, DataUnavailableError

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.recsys._synthetic import SyntheticConfig

ONLINE_RETAIL_COLUMNS: tuple[str, ...] = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
"""The columns of the Online Retail file, in its order."""

NON_PRODUCT_CODES: frozenset[str] = frozenset(
    {"POST", "D", "M", "m", "DOT", "BANK CHARGES", "AMAZONFEE", "CRUK", "C2", "PADS", "S", "B"}
)
"""StockCodes that are not products (postage, discounts, fees...); ``gift_*`` is dropped too."""

UCI_DATASET_URL = "https://archive.ics.uci.edu/static/public/352/online+retail.zip"
"""The official download of UCI data set 352 (a zip holding ``Online Retail.xlsx``)."""

DATA_ENV_VAR = "FLYWHEEL_DATA"
UCI_ROWS = 541_909  # the published instance count; a download that differs is rejected

# File names looked for inside a data folder, best first.
_CANDIDATE_NAMES = (
    "online_retail.parquet",
    "online_retail.csv.gz",
    "online_retail.csv",
    "Online Retail.xlsx",
    "online_retail.xlsx",
)
_SUFFIXES = (".parquet", ".csv.gz", ".csv", ".xlsx")


@dataclass(frozen=True)
class DataSource:
    """Where a data set came from: ``kind`` is ``file``, ``download`` or ``synthetic``.

    ``description`` is one plain sentence for humans (printed by the CLI and the benchmark);
    ``path`` is the file read (``None`` for synthetic data).
    """

    kind: Literal["file", "download", "synthetic"]
    description: str
    path: Path | None = None

    @property
    def is_real(self) -> bool:
        return self.kind != "synthetic"


@dataclass(frozen=True)
class LoadedTransactions:
    """Raw invoice lines (Online Retail schema, nothing removed) plus where they came from."""

    frame: pd.DataFrame
    source: DataSource


def repository_root() -> Path:
    """The repository folder of this checkout (``src/flywheel/recsys/`` is three levels down)."""
    return Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """``../shared/datasets/uci-online-retail/`` relative to the repository root."""
    return repository_root().parent / "shared" / "datasets" / "uci-online-retail"


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/flywheel`` (default ``~/.cache/flywheel``): downloads, embeddings."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flywheel"


def default_cache_dir() -> Path:
    """Where the UCI download is kept: ``default_cache_root() / "uci-online-retail"``."""
    return default_cache_root() / "uci-online-retail"


def find_data_file(path: str | Path) -> Path:
    """The Online Retail file at ``path``: the file itself, or the best one inside a folder.

    Raises ``DataUnavailableError`` when nothing usable is there, ``DataFormatError`` for a file
    whose suffix is none of .parquet, .csv, .csv.gz, .xlsx.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for name in _CANDIDATE_NAMES:
            if (p / name).is_file():
                return p / name
        for suffix in _SUFFIXES:
            found = sorted(q for q in p.iterdir() if q.name.endswith(suffix))
            if found:
                return found[0]
        raise DataUnavailableError(
            f"{p}: folder holds no Online Retail file (looked for {', '.join(_CANDIDATE_NAMES)})"
        )
    if not p.is_file():
        raise DataUnavailableError(f"{p}: no such file or folder")
    if not p.name.endswith(_SUFFIXES):
        raise DataFormatError(f"{p}: unsupported file type; use one of {', '.join(_SUFFIXES)}")
    return p


def read_online_retail(path: str | Path) -> pd.DataFrame:
    """Read an Online Retail file (parquet, csv, csv.gz or the original xlsx) with uniform types.

    Returns every row unchanged, typed as: InvoiceNo/StockCode/Description/Country str,
    Quantity int32, InvoiceDate datetime64, UnitPrice float64, CustomerID float64 (NaN = guest).
    """
    import pandas as pd

    file = find_data_file(path)
    name = file.name.lower()
    try:
        if name.endswith(".parquet"):
            df = pd.read_parquet(file)
        elif name.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(file, dtype={"InvoiceNo": str, "StockCode": str, "Description": str})
        else:
            df = _read_xlsx(file)
    except (DataFormatError, DataUnavailableError):
        raise
    except Exception as exc:  # a parser's own error: name the file
        raise DataFormatError(f"{file}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return normalize_online_retail(df, origin=str(file))


def _read_xlsx(file: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        import openpyxl  # noqa: F401  (pandas' xlsx engine)
    except ImportError as exc:
        raise DataFormatError(
            f"{file}: reading .xlsx needs the 'openpyxl' package (pip install openpyxl), "
            "or convert the file to CSV/parquet"
        ) from exc
    return pd.read_excel(file, dtype={"InvoiceNo": str, "StockCode": str, "Description": str})


def normalize_online_retail(df: pd.DataFrame, *, origin: str = "frame") -> pd.DataFrame:
    """Check the columns of an Online Retail frame and give them the uniform types."""
    import pandas as pd

    missing = [c for c in ONLINE_RETAIL_COLUMNS if c not in df.columns]
    if missing:
        raise DataFormatError(
            f"{origin}: not the Online Retail schema; missing column(s) {', '.join(missing)}"
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    try:
        for col in ("InvoiceNo", "StockCode", "Country"):
            out[col] = df[col].astype(str).to_numpy()
        out["Description"] = df["Description"].astype("str").to_numpy()
        out.loc[df["Description"].isna().to_numpy(), "Description"] = None
        out["Quantity"] = pd.to_numeric(df["Quantity"]).astype("int32").to_numpy()
        out["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"]).to_numpy()
        out["UnitPrice"] = pd.to_numeric(df["UnitPrice"]).astype("float64").to_numpy()
        out["CustomerID"] = pd.to_numeric(df["CustomerID"]).astype("float64").to_numpy()
    except (ValueError, TypeError) as exc:
        raise DataFormatError(f"{origin}: a column has values of the wrong type ({exc})") from exc
    return out[list(ONLINE_RETAIL_COLUMNS)]


def clean_transactions(df: pd.DataFrame) -> pd.DataFrame:
    """Step 1 of protocol OR-T1: the purchase lines a recommender learns from.

    Keeps rows with a CustomerID, no ``C`` (cancellation) invoice, Quantity > 0 and
    UnitPrice > 0, and drops the non-product StockCodes (``NON_PRODUCT_CODES`` and ``gift_*``).
    CustomerID becomes int64. The row order is kept.
    """
    stock = df["StockCode"].astype(str)
    keep = (
        df["CustomerID"].notna()
        & ~df["InvoiceNo"].astype(str).str.startswith("C")
        & (df["Quantity"] > 0)
        & (df["UnitPrice"] > 0)
        & ~stock.isin(NON_PRODUCT_CODES)
        & ~stock.str.startswith("gift_")
    )
    out = df.loc[keep].reset_index(drop=True)
    out["CustomerID"] = out["CustomerID"].astype("int64")
    return out


def download_online_retail(
    cache_dir: str | Path | None = None,
    *,
    url: str = UCI_DATASET_URL,
    connect_timeout: float = 3.0,
    read_timeout: float = 60.0,
) -> Path:
    """Download the official UCI file once into ``cache_dir`` and return the cached xlsx path.

    An existing cached file is reused. The download is written to a temporary file and moved
    into place only when complete (a crash leaves no half file). Fails fast with
    ``DataUnavailableError`` when the host cannot be reached.
    """
    import httpx

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / "Online Retail.xlsx"
    if target.is_file():
        return target
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            response.raise_for_status()
            payload = io.BytesIO()
            for chunk in response.iter_bytes():
                payload.write(chunk)
    except httpx.HTTPError as exc:
        raise DataUnavailableError(
            f"cannot download {url}: {type(exc).__name__}: {exc or 'no detail'}"
        ) from exc
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(payload) as archive:
            members = [n for n in archive.namelist() if n.lower().endswith(".xlsx")]
            if not members:
                raise DataFormatError(f"{url}: the archive holds no .xlsx file")
            with (
                archive.open(members[0]) as src,
                tempfile.NamedTemporaryFile(dir=cache, suffix=".part", delete=False) as tmp,
            ):
                shutil.copyfileobj(src, tmp)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{url}: the download is not a zip archive ({exc})") from exc
    Path(tmp.name).replace(target)
    return target


def resolve_data_source(
    data: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    default_dir: Path | None = None,
    allow_download: bool = True,
    cache_dir: str | Path | None = None,
    url: str = UCI_DATASET_URL,
    connect_timeout: float = 3.0,
) -> DataSource:
    """Decide where the data comes from (see the module docstring for the order).

    An explicit ``data`` path or ``$FLYWHEEL_DATA`` that does not exist raises
    ``DataUnavailableError``. When no real data can be found or fetched the answer is a
    ``synthetic`` source whose description says why.
    """
    environ = os.environ if env is None else env
    explicit = data if data is not None else environ.get(DATA_ENV_VAR) or None
    if explicit is not None:
        origin = "--data" if data is not None else f"${DATA_ENV_VAR}"
        try:
            file = find_data_file(explicit)
        except DataUnavailableError as exc:
            raise DataUnavailableError(f"{origin}: {exc}") from exc
        return DataSource("file", f"data file {file} (from {origin})", file)
    folder = default_data_dir() if default_dir is None else default_dir
    if folder.is_dir():
        try:
            file = find_data_file(folder)
            return DataSource("file", f"real data: {file} (shared data folder)", file)
        except DataUnavailableError:
            pass
    reasons = [f"no data at {folder}"]
    if allow_download:
        try:
            file = download_online_retail(cache_dir, url=url, connect_timeout=connect_timeout)
            return DataSource("download", f"real data: {file} (downloaded from {url})", file)
        except (DataUnavailableError, DataFormatError) as exc:
            reasons.append(str(exc))
    else:
        reasons.append("download disabled")
    return DataSource(
        "synthetic",
        "SYNTHETIC data (seeded generator), not the real Online Retail file: " + "; ".join(reasons),
    )


def load_transactions(
    data: str | Path | None = None,
    *,
    synthetic: SyntheticConfig | None = None,
    env: Mapping[str, str] | None = None,
    default_dir: Path | None = None,
    allow_download: bool = True,
    cache_dir: str | Path | None = None,
    url: str = UCI_DATASET_URL,
    connect_timeout: float = 3.0,
) -> LoadedTransactions:
    """Raw invoice lines from the first source that works (``resolve_data_source``).

    When the source is synthetic, ``synthetic`` (default ``SyntheticConfig()``) sets its size.
    """
    source = resolve_data_source(
        data,
        env=env,
        default_dir=default_dir,
        allow_download=allow_download,
        cache_dir=cache_dir,
        url=url,
        connect_timeout=connect_timeout,
    )
    if source.kind == "synthetic":
        from flywheel.recsys._synthetic import SyntheticConfig, generate_transactions

        config = synthetic or SyntheticConfig()
        frame = generate_transactions(config)
        described = (
            f"{source.description} (seed {config.seed}, {config.n_users:,} users, "
            f"{config.n_items:,} items)"
        )
        return LoadedTransactions(frame, DataSource("synthetic", described))
    assert source.path is not None  # invariant of resolve_data_source, not user input
    frame = read_online_retail(source.path)
    if source.kind == "download" and len(frame) != UCI_ROWS:
        raise DataFormatError(
            f"{source.path}: has {len(frame):,} rows, the UCI file has {UCI_ROWS:,}; "
            "delete the cached file and retry"
        )
    return LoadedTransactions(frame, source)
