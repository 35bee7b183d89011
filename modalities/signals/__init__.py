"""ECG/EEG (and other 1-D physiological signals): readers, manifests, transforms, encoders."""
