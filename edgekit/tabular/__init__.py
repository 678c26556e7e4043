"""Tables and scikit-learn pipelines: CSV/Parquet as model inputs, the pipeline converted whole, checked against itself.

- :mod:`~edgekit.tabular.table`: a table's columns as one input each (strings stay strings, ``""`` is missing);
- :mod:`~edgekit.tabular.load`: a fitted pipeline from ``.joblib``/``.pkl`` (a pickle: code) or ``.skops`` (trusted types);
- :mod:`~edgekit.tabular.convert`: skl2onnx / onnxmltools, each part in scikit-learn's own precision;
- :mod:`~edgekit.tabular.check`: ``predict``/``predict_proba`` parity, the manifest's fields and category counts.
"""
