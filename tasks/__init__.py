"""Task heads (classification, segmentation) fine-tuned on pretrained encoders."""
