"""Modality adapters: readers, manifests, preprocessing, views and default encoders per modality."""
