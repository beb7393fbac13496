"""Machine learning: the model contract, the fast tier (LightGBM, anomaly detectors), the registry of ONNX
artefacts, the pipeline scoring step and the evaluation protocols on real data.

The deep tier (CNN, LSTM, Transformer) lives in :mod:`finsecure.ml.nn` and :mod:`finsecure.ml.deep`.
"""
