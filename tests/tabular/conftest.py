"""The Palmer penguins table (shipped inside the palmerpenguins package: strings, missing values) and pipelines fitted on it."""

from __future__ import annotations

import importlib.resources
import warnings
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("skl2onnx")

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
CATEGORICAL = ["island", "sex"]


@pytest.fixture(scope="session")
def penguins(tmp_path_factory) -> dict[str, Path]:
    """train.csv (80% of the rows) and heldout.csv (the rest, plus an unseen island and more missing values)."""
    src = importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"
    df = pd.read_csv(str(src)).sample(frac=1.0, random_state=0).reset_index(drop=True)
    cut = int(len(df) * 0.8)
    train, held = df.iloc[:cut].copy(), df.iloc[cut:].copy().reset_index(drop=True)
    held.loc[0, "island"] = "Atlantis"  # a category the encoder never saw
    held.loc[1, "sex"] = np.nan
    held.loc[2, "bill_length_mm"] = np.nan
    root = tmp_path_factory.mktemp("penguins")
    train.to_csv(root / "train.csv", index=False)
    held.to_csv(root / "heldout.csv", index=False)
    return {"train": root / "train.csv", "heldout": root / "heldout.csv", "dir": root}


def pipeline(classifier, *, scaler: str = "standard"):
    """ColumnTransformer(imputer + scaler | imputer + one-hot) + ``classifier``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    scale = StandardScaler() if scaler == "standard" else MinMaxScaler()
    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", scale)]), NUMERIC),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("onehot", OneHotEncoder(handle_unknown="ignore"))]),
         CATEGORICAL),
    ])
    return Pipeline([("pre", pre), ("clf", classifier)])


def fit(pipe, train: Path, *, encode_labels: bool = False):
    df = pd.read_csv(train)
    y = df.pop("species")
    if encode_labels:  # XGBoost takes class indices only
        y = y.astype("category").cat.codes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe.fit(df, y)


@pytest.fixture(scope="session")
def penguins_model(penguins) -> dict[str, Path]:
    """A random forest pipeline on the penguins, compressed by the CLI: {"dir": output directory, "pipeline": the .joblib}."""
    import joblib
    from click.testing import CliRunner
    from sklearn.ensemble import RandomForestClassifier

    from edgekit.cli.main import cli

    root = penguins["dir"]
    joblib.dump(fit(pipeline(RandomForestClassifier(40, random_state=0)), penguins["train"]), root / "penguins.joblib")
    res = CliRunner().invoke(cli, ["compress", "--data", str(penguins["train"]), "--label", "species", "-o", str(root / "model"),
                                   str(root / "penguins.joblib")])
    assert res.exit_code == 0, res.output
    return {"dir": root / "model", "pipeline": root / "penguins.joblib"}
