"""Loss functions of medcl: pure typed functions with thin ``nn.Module`` wrappers."""
