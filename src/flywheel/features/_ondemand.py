"""On-demand feature views: request-time transforms applied after features are fetched."""

from __future__ import annotations

import pandas as pd

from flywheel.features._errors import FeatureStoreError
from flywheel.features._resolve import Resolved


def apply_on_demand(df: pd.DataFrame, resolved: Resolved, full: bool) -> pd.DataFrame:
    """Run each on-demand view's ``udf`` over its inputs and add the requested outputs."""
    for odfv, wanted in resolved.on_demand:
        inputs = pd.DataFrame(index=df.index)
        for src in odfv.sources:
            view_ref, _, feat = src.partition(":")
            col = f"{view_ref.split('@')[0]}__{feat}" if full else feat
            inputs[feat] = df[col]
        for f in odfv.request_schema:
            if f.name not in df.columns:
                raise FeatureStoreError(
                    f"on-demand view {odfv.name!r} needs request field {f.name!r} in entity rows"
                )
            inputs[f.name] = df[f.name]
        assert odfv.udf is not None
        try:
            result = odfv.udf(inputs)
        except Exception as exc:
            raise FeatureStoreError(
                f"on-demand view {odfv.name!r}: its function failed: {type(exc).__name__}: {exc}"
            ) from None
        for feat in wanted:
            if not isinstance(result, pd.DataFrame) or feat not in result.columns:
                raise FeatureStoreError(f"on-demand view {odfv.name!r} did not return {feat!r}")
            df[f"{odfv.name}__{feat}" if full else feat] = result[feat].to_numpy()
    return df
