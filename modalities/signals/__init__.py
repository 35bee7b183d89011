"""ECG/EEG (and other 1-D physiological signals): readers, manifests, transforms, views, encoders.

The adapter (:class:`SignalAdapter`) is what configs name; the pieces below are public for users who
compose their own pipelines.
"""

from modalities.signals.adapter import DATASET_CHANNELS, SignalAdapter
from modalities.signals.encoders import TS2VecEncoder, TsaiEncoder, build_encoder
from modalities.signals.indexing import IndexResult, index_signals, load_index, save_index
from modalities.signals.manifests import Manifest, build_manifest
from modalities.signals.readers import read_edf, read_signal, read_signal_header, read_wfdb
from modalities.signals.record import SignalRecord

__all__ = [
    "DATASET_CHANNELS",
    "IndexResult",
    "Manifest",
    "SignalAdapter",
    "SignalRecord",
    "TS2VecEncoder",
    "TsaiEncoder",
    "build_encoder",
    "build_manifest",
    "index_signals",
    "load_index",
    "read_edf",
    "read_signal",
    "read_signal_header",
    "read_wfdb",
    "save_index",
]
