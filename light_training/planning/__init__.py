"""Planning a dataset: its fingerprint and plan (plans), and the network that fits a GPU memory target (network_plan)."""
