"""Neural architectures: pure ``torch.nn.Module`` classes, trained by :mod:`finsecure.ml.deep`.

Every module maps ``x`` of shape ``(n, steps, features)`` (raw values, NaN = missing, last step = the
scored event) to one logit per row. Importing this package imports PyTorch: only training needs it;
serving runs the exported ONNX graphs.
"""

from finsecure.ml.nn.cnn import SequenceCNN
from finsecure.ml.nn.lstm import SequenceLSTM
from finsecure.ml.nn.transformer import SequenceTransformer

__all__ = ["SequenceCNN", "SequenceLSTM", "SequenceTransformer"]
