"""A run's model as an MLflow pyfunc model, in the loader_module form: MLflow stores the model bundle
(outputs/bundle.py) as data and names this installed module as its code, so loading it runs no stored code.
``mlflow.pyfunc.load_model(uri).predict(df)``: a cells x genes DataFrame (gene names as columns, values of the kind
given to training) -> per cell ``cluster`` (-1 for a cell with zero total) and the embedding ``z_0``, ``z_1``, ...;
the clusters are those of ``jojoscl_dist.predict`` on the same cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from jojoscl_dist.outputs import bundle
from jojoscl_dist.predict import predict


class PyfuncModel:
    def __init__(self, b: bundle.ModelBundle):
        self.bundle = b

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        df = pd.DataFrame(model_input)
        adata = ad.AnnData(df.to_numpy(dtype=np.float32), obs=pd.DataFrame(index=df.index.astype(str)),
                           var=pd.DataFrame(index=df.columns.astype(str)))
        pred = predict(self.bundle, adata)
        cluster = np.full(len(df), -1, dtype=np.int64)
        cluster[pred.cell_mask] = pred.labels
        z = np.full((len(df), pred.z.shape[1]), np.nan, dtype=np.float32)
        z[pred.cell_mask] = pred.z
        out = pd.DataFrame(z, index=df.index, columns=[f"z_{i}" for i in range(z.shape[1])])
        out.insert(0, "cluster", cluster)
        return out


def _load_pyfunc(data_path: str) -> PyfuncModel:
    """MLflow's entry point: ``data_path`` is the model's copy of the run's model/ folder."""
    return PyfuncModel(bundle.load(data_path))
